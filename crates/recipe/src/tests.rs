//! Unit tests of the public API: parsing, structure and type errors, semantic rules; overrides
//! and the resolved form (`overrides`), `[distributed]` and per-rank faults (`distributed`),
//! `params` (`params`) and garbage input (`garbage`) in the submodules.

use super::*;
use std::path::PathBuf;

mod distributed;
mod garbage;
mod overrides;
mod params;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn sets(o: &[&str]) -> Vec<String> {
    o.iter().map(|s| s.to_string()).collect()
}

fn ok(text: &str) -> Recipe {
    parse(text, "r.toml", Path::new("."), &[]).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> RecipeError {
    err_with(text, &[])
}

fn err_with(text: &str, o: &[&str]) -> RecipeError {
    match parse(text, "r.toml", Path::new("."), &sets(o)) {
        Ok(r) => panic!("accepted: {text:?} {o:?} -> {r:?}"),
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.contains('\n'), "not one paragraph: {shown}");
            assert!(shown.contains(" Fix: "), "no fix: {shown}");
            e
        }
    }
}

/// Asserts `e` blames `key`, from `origin`, and that its text contains each of `words`.
#[track_caller]
fn blames(e: &RecipeError, origin: &str, key: &str, words: &[&str]) {
    assert_eq!(e.origin, origin, "{e}");
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    let shown = e.to_string();
    for w in words {
        assert!(shown.contains(w), "{w:?} missing from: {shown}");
    }
}

#[test]
fn empty_recipe_is_all_defaults() {
    let r = ok("");
    let mut want = Recipe::default();
    want.training.steps = Some(DEFAULT_STEPS);
    assert_eq!(r, want);
    assert_eq!(r.micro_batch.initial, MicroInitial::Auto);
    assert_eq!(r.model.kind, "mlp");
}

#[test]
fn full_recipe_parses() {
    let d = dir();
    std::fs::write(d.path().join("data.csv"), "a,b\n1,2\n").unwrap();
    let text = r#"
[run]
name = "demo"
seed = 7
output_dir = "out"
backend = "cuda"
device = 1
gpu_memory_limit = "8GiB"
log_every = 5

[model]
kind = "gpt"
n_layer = 2
dropout = 0.1
[model.attn]
heads = 4

[data]
kind = "csv"
path = "data.csv"
valid_fraction = 0.2
header = false
label_column = 3
task = "regression"
standardize = false

[optimizer]
kind = "sgd"
lr = 1
weight_decay = 0.01
betas = [0.8, 0.9]
eps = 1e-6
momentum = 0.9
grad_clip_norm = 1.0

[lr_schedule]
kind = "cosine"
warmup_steps = 10
final_lr_fraction = 0.1

[training]
epochs = 3
effective_batch = 96
eval_every = 10
eval_batch = 128

[micro_batch]
initial = 48
min = 2
max = 64
grow_after = 20
max_retries_per_step = 4

[checkpoint]
every = 50
keep = 2
on_oom = false

[supervisor]
enabled = false
max_restarts = 2

[faults]
simulate_memory_samples = 40
simulate_memory_changes = [{ step = 10, samples = 16 }]
oom_at = [{ step = 3, phase = "forward" }, { step = 4, phase = "eval" }]
panic_at = [{ step = 9, phase = "optimizer" }]
"#;
    let r = parse(text, "full.toml", d.path(), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.run.backend, Backend::Cuda);
    assert_eq!(r.model.kind, "gpt");
    assert_eq!(r.model.params["n_layer"].as_integer(), Some(2));
    assert_eq!(r.model.params["attn"]["heads"].as_integer(), Some(4));
    assert!(!r.model.params.contains_key("kind"));
    assert_eq!(r.data.label_column.as_deref(), Some("3"));
    assert_eq!(PathBuf::from(r.data.path.as_deref().unwrap()), std::path::absolute(d.path().join("data.csv")).unwrap());
    assert_eq!(r.optimizer.lr, 1.0);
    assert_eq!(r.training.steps, None);
    assert_eq!(r.training.epochs, Some(3));
    assert_eq!(r.micro_batch.initial, MicroInitial::Fixed(48));
    assert_eq!(r.faults.oom_at[1], FaultAt { step: 4, phase: Phase::Eval, rank: None });
    assert_eq!(r.faults.simulate_memory_changes, vec![CapacityChange { step: 10, samples: 16, rank: None }]);

    // Round trip through the resolved form, read from another directory.
    let text2 = to_toml_string(&r);
    let r2 = parse(&text2, "resolved.toml", Path::new("/"), &[]).unwrap_or_else(|e| panic!("{e}\n{text2}"));
    assert_eq!(r, r2, "{text2}");
    assert_eq!(fingerprint(&r), fingerprint(&r2));
    assert!(diff(&r, &r2).is_empty());
}

#[test]
fn round_trip_of_defaults_and_odd_model_keys() {
    let mut r = ok("[model]\n\"odd key\" = \"x\"\nwhen = 1979-05-27T07:32:00Z\nlist = [1, 2]\nempty = {}\n");
    assert!(r.model.params.contains_key("when"));
    let text = to_toml_string(&r);
    assert!(text.contains("# max is unset: the effective batch"), "{text}");
    assert_eq!(parse(&text, "x", Path::new("."), &[]).unwrap(), r);
    r = ok("");
    let text = to_toml_string(&r);
    assert!(text.contains("steps = 100"), "{text}");
    assert!(text.contains("initial = \"auto\""), "{text}");
    assert_eq!(parse(&text, "x", Path::new("."), &[]).unwrap(), r);
}

#[test]
fn syntax_error_names_file_and_line() {
    let e = err("[run]\nname = \"x\"\nbackend = cpu\n");
    assert_eq!(e.origin, "r.toml");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("r.toml:3: "), "{e}");
    assert!(e.to_string().contains("line 3"), "{e}");
    let e = err("[run]\nseed = 1\nseed = 2\n");
    assert_eq!(e.line, Some(3), "{e}");
    let e = err("[run\n");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn missing_file_is_an_error() {
    let d = dir();
    let p = d.path().join("nope.toml");
    let e = load(&p, &[]).unwrap_err();
    assert_eq!(e.origin, p.display().to_string());
    assert!(e.message.contains("cannot read"), "{e}");
}

#[test]
fn load_resolves_data_path_against_the_recipe_directory() {
    let d = dir();
    std::fs::create_dir(d.path().join("cfg")).unwrap();
    std::fs::write(d.path().join("cfg/train.txt"), "hello").unwrap();
    let p = d.path().join("cfg/r.toml");
    std::fs::write(&p, "[data]\nkind = \"text\"\npath = \"train.txt\"\n").unwrap();
    let r = load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
    let got = PathBuf::from(r.data.path.unwrap());
    assert!(got.is_absolute());
    assert!(got.is_file());

    // A missing data file, a directory, and a file-based kind without a path.
    std::fs::write(&p, "[data]\nkind = \"csv\"\npath = \"missing.csv\"\n").unwrap();
    let e = load(&p, &[]).unwrap_err();
    blames(&e, &p.display().to_string(), "data.path", &["missing.csv", "no such file"]);
    std::fs::write(&p, "[data]\nkind = \"csv\"\npath = \".\"\n").unwrap();
    let e = load(&p, &[]).unwrap_err();
    blames(&e, &p.display().to_string(), "data.path", &["not a regular file"]);
    std::fs::write(&p, "[data]\nkind = \"csv\"\n").unwrap();
    let e = load(&p, &[]).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("data.path"), "{e}");
    // A path given with --set is relative to the current directory, not the recipe's.
    std::fs::write(&p, "[data]\nkind = \"text\"\n").unwrap();
    let e = load(&p, &sets(&["data.path=train.txt"])).unwrap_err();
    blames(&e, "--set", "data.path", &["train.txt"]);
    let abs = d.path().join("cfg/train.txt").display().to_string();
    let r = load(&p, &sets(&[&format!("data.path={abs}")])).unwrap_or_else(|e| panic!("{e}"));
    assert!(PathBuf::from(r.data.path.unwrap()).is_file());
}

#[test]
fn unknown_key_in_each_section_lists_valid_keys() {
    for spec in keys::sections().iter().filter(|s| !s.free_form) {
        let e = err(&format!("[{}]\nbogus_key = 1\n", spec.name));
        let key = format!("{}.bogus_key", spec.name);
        let mut words = vec![key.as_str()];
        words.extend(spec.keys.iter().map(|k| k.name));
        blames(&e, "r.toml", &key, &words);
    }
    // A typo gets a suggestion; a key in the wrong section is pointed home.
    let e = err("[training]\nstep = 3\n");
    assert!(e.fix.contains("training.steps"), "{e}");
    let e = err("[training]\nlr = 0.1\n");
    assert!(e.fix.contains("[optimizer]"), "{e}");
    // [model] is free-form: its own keys are the model's business.
    ok("[model]\nbogus_key = 1\n");
}

#[test]
fn unknown_section_lists_sections() {
    let e = err("[trainng]\nsteps = 3\n");
    blames(
        &e,
        "r.toml",
        "trainng",
        &["[training]", "[micro_batch]", "[distributed]", "[faults]", "did you mean [training]"],
    );
    let e = err("steps = 3\n");
    blames(&e, "r.toml", "steps", &["training.steps"]);
    let e = err("run = 3\n");
    blames(&e, "r.toml", "run", &["[run]", "section"]);
}

#[test]
fn wrong_types_name_key_value_and_expected_type() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "[training]\neffective_batch = \"abc\"\n",
            "training.effective_batch",
            &["\"abc\"", "non-negative integer", "32"],
        ),
        ("[training]\neffective_batch = -1\n", "training.effective_batch", &["-1", "non-negative integer"]),
        ("[training]\nsteps = 2.5\n", "training.steps", &["2.5", "non-negative integer"]),
        ("[optimizer]\nlr = \"fast\"\n", "optimizer.lr", &["\"fast\"", "a number", "0.001"]),
        ("[optimizer]\nbetas = [0.9]\n", "optimizer.betas", &["[0.9]", "two numbers"]),
        ("[optimizer]\nbetas = 0.9\n", "optimizer.betas", &["0.9", "two numbers"]),
        ("[checkpoint]\non_oom = \"yes\"\n", "checkpoint.on_oom", &["\"yes\"", "true or false"]),
        ("[run]\nname = 5\n", "run.name", &["5", "string"]),
        ("[run]\ngpu_memory_limit = 8\n", "run.gpu_memory_limit", &["8", "string"]),
        ("[micro_batch]\ninitial = 0\n", "micro_batch.initial", &["0", "\"auto\" or a positive integer"]),
        ("[micro_batch]\ninitial = \"big\"\n", "micro_batch.initial", &["\"big\"", "\"auto\""]),
        ("[micro_batch]\ninitial = -4\n", "micro_batch.initial", &["-4"]),
        ("[data]\nlabel_column = -1\n", "data.label_column", &["-1", "column"]),
        ("[faults]\noom_at = 3\n", "faults.oom_at", &["3", "step"]),
        ("[model]\nkind = 5\n", "model.kind", &["5", "string"]),
        // TOML reads a one-key table as an enum variant: a choice must still be a string.
        ("[optimizer]\nkind = { sgd = [] }\n", "optimizer.kind", &["{ sgd = [] }", "string", "\"adamw\""]),
        ("[run]\nbackend = { cuda = 1 }\n", "run.backend", &["{ cuda = 1 }", "string", "\"cpu\""]),
        ("[data]\ntask = { regression = {} }\n", "data.task", &["string"]),
    ];
    for (text, key, words) in cases {
        let e = err(text);
        blames(&e, "r.toml", key, words);
    }
}

#[test]
fn fault_entries_are_checked_inside() {
    let e = err("[faults]\noom_at = [{ step = 3, phase = \"fwd\" }]\n");
    blames(&e, "r.toml", "faults.oom_at[0].phase", &["\"fwd\"", "forward", "backward"]);
    let e = err("[faults]\noom_at = [{ step = 3 }]\n");
    blames(&e, "r.toml", "faults.oom_at[0].phase", &["missing"]);
    let e = err("[faults]\npanic_at = [{ step = 3, phase = \"eval\", when = 1 }]\n");
    blames(&e, "r.toml", "faults.panic_at[0].when", &["step", "phase"]);
    let e = err("[faults]\nsimulate_memory_changes = [{ step = \"x\", samples = 1 }]\n");
    blames(&e, "r.toml", "faults.simulate_memory_changes[0].step", &["\"x\"", "integer"]);
}

/// Every semantic rule, with the key it blames and words its message must contain.
#[test]
fn semantic_rules() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("[run]\nbackend = \"cdua\"", "run.backend", &["\"cdua\"", "\"cuda\"", "did you mean"]),
        ("[run]\nlog_every = 0", "run.log_every", &["= 0"]),
        ("[run]\ngpu_memory_limit = \"lots\"", "run.gpu_memory_limit", &["\"lots\"", "8GiB"]),
        ("[run]\ngpu_memory_limit = \"0GiB\"", "run.gpu_memory_limit", &["zero"]),
        ("[faults]\naddress_space_headroom = \"lots\"", "faults.address_space_headroom", &["\"lots\"", "256MiB"]),
        ("[faults]\naddress_space_headroom = \"0MiB\"", "faults.address_space_headroom", &["zero"]),
        (
            "[run]\nbackend = \"tch-cuda\"\n[faults]\naddress_space_headroom = \"1GiB\"",
            "faults.address_space_headroom",
            &["GPU", "CPU backend", "run.backend = \"tch-cuda\""],
        ),
        ("[run]\nname = \"a/b\"", "run.name", &["separator"]),
        ("[run]\nname = \"\"", "run.name", &["non-empty"]),
        ("[run]\noutput_dir = \"\"", "run.output_dir", &["runs"]),
        ("[model]\nkind = \"\"", "model.kind", &["mlp"]),
        ("[data]\nkind = \"parquet\"", "data.kind", &["\"parquet\"", "\"csv\"", "\"synthetic\""]),
        ("[data]\nkind = \"text\"", "data.path", &["missing", "synthetic"]),
        ("[data]\nvalid_fraction = 1.0", "data.valid_fraction", &["1.0", "below 1"]),
        ("[data]\nvalid_fraction = -0.1", "data.valid_fraction", &["-0.1"]),
        ("[data]\nvalid_fraction = nan", "data.valid_fraction", &["NaN"]),
        ("[data]\ntask = \"ranking\"", "data.task", &["\"classification\"", "\"regression\""]),
        ("[data]\nsamples = 1", "data.samples", &["= 1", ">= 2"]),
        ("[data]\nfeatures = 0", "data.features", &["feature"]),
        ("[data]\nclasses = 1", "data.classes", &["two classes"]),
        ("[data]\nnoise = -1.0", "data.noise", &["-1.0"]),
        ("[optimizer]\nkind = \"adam\"", "optimizer.kind", &["\"adamw\"", "\"sgd\""]),
        ("[optimizer]\nlr = 0", "optimizer.lr", &["0.0", "above zero"]),
        ("[optimizer]\nlr = -0.1", "optimizer.lr", &["-0.1"]),
        ("[optimizer]\nlr = inf", "optimizer.lr", &["inf", "finite"]),
        ("[optimizer]\nlr = nan", "optimizer.lr", &["NaN"]),
        ("[optimizer]\nweight_decay = -0.01", "optimizer.weight_decay", &["-0.01"]),
        ("[optimizer]\nbetas = [0.9, 1.0]", "optimizer.betas", &["[0.9, 1.0]", "beta2"]),
        ("[optimizer]\nbetas = [-0.1, 0.9]", "optimizer.betas", &["beta1"]),
        ("[optimizer]\neps = 0", "optimizer.eps", &["above zero"]),
        ("[optimizer]\nmomentum = 1", "optimizer.momentum", &["1.0"]),
        ("[optimizer]\ngrad_clip_norm = 0", "optimizer.grad_clip_norm", &["0.0"]),
        ("[lr_schedule]\nkind = \"step\"", "lr_schedule.kind", &["\"cosine\"", "\"linear\"", "\"constant\""]),
        ("[lr_schedule]\nfinal_lr_fraction = 1.5", "lr_schedule.final_lr_fraction", &["1.5"]),
        ("[training]\nsteps = 10\nepochs = 2", "training.epochs", &["both", "10", "2"]),
        ("[training]\nsteps = 0", "training.steps", &["= 0"]),
        ("[training]\nepochs = 0", "training.epochs", &["= 0"]),
        (
            "[training]\neffective_batch = 0",
            "training.effective_batch",
            &["`training.effective_batch` = 0 is invalid: an optimizer step must consume at least one sample."],
        ),
        ("[training]\neval_batch = 0", "training.eval_batch", &["= 0"]),
        ("[micro_batch]\nmin = 0", "micro_batch.min", &["= 0"]),
        ("[micro_batch]\nmax = 0", "micro_batch.max", &["= 0"]),
        ("[micro_batch]\nmin = 8\nmax = 4", "micro_batch.min", &["micro_batch.max = 4"]),
        ("[micro_batch]\nmin = 64", "micro_batch.min", &["training.effective_batch = 32"]),
        ("[micro_batch]\ninitial = 2\nmin = 4", "micro_batch.initial", &["below micro_batch.min = 4"]),
        ("[micro_batch]\ninitial = 16\nmax = 8", "micro_batch.initial", &["above micro_batch.max = 8"]),
        ("[micro_batch]\ngrow_after = 0", "micro_batch.grow_after", &["= 0"]),
        ("[micro_batch]\nmax_retries_per_step = 0", "micro_batch.max_retries_per_step", &["= 0"]),
        ("[checkpoint]\nkeep = 1", "checkpoint.keep", &["= 1", "being written", "corrupt", "fallback", ">= 2"]),
        ("[checkpoint]\nkeep = 0", "checkpoint.keep", &["= 0"]),
        ("[faults]\nsimulate_memory_samples = 0", "faults.simulate_memory_samples", &["= 0"]),
        ("[faults]\noom_at = [{ step = 0, phase = \"forward\" }]", "faults.oom_at[0].step", &["count from 1"]),
        (
            "[faults]\npanic_at = [{ step = 1, phase = \"eval\" }, { step = 0, phase = \"eval\" }]",
            "faults.panic_at[1].step",
            &[],
        ),
        (
            "[faults]\nsimulate_memory_changes = [{ step = 0, samples = 4 }]",
            "faults.simulate_memory_changes[0].step",
            &[],
        ),
        (
            "[faults]\nsimulate_memory_changes = [{ step = 2, samples = 0 }]",
            "faults.simulate_memory_changes[0].samples",
            &[],
        ),
    ];
    for (text, key, words) in cases {
        let e = err(text);
        blames(&e, "r.toml", key, words);
    }
}

#[test]
fn allowed_edge_cases() {
    // max above the effective batch is capped at use, not refused; so is initial.
    let r = ok("[micro_batch]\nmax = 1024\ninitial = 512\n");
    assert_eq!(r.micro_batch.max, Some(1024));
    ok("[micro_batch]\ninitial = 64\n");
    ok("[micro_batch]\nmin = 32\nmax = 32\ninitial = 32\n");
    // One class is fine for regression; zero validation is fine.
    ok("[data]\ntask = \"regression\"\nclasses = 1\nvalid_fraction = 0.0\n");
    ok("[lr_schedule]\nfinal_lr_fraction = 1.0\n");
    ok("[optimizer]\nbetas = [0, 0.5]\nmomentum = 0\n");
    ok("[checkpoint]\nkeep = 2\n");
    ok("[run]\ngpu_memory_limit = \"1.5GiB\"\n");
    ok("[faults]\naddress_space_headroom = \"100MiB\"\n");
    for b in Backend::names() {
        ok(&format!("[run]\nbackend = \"{b}\"\n"));
    }
    let r = ok("[training]\nepochs = 2\n");
    assert_eq!((r.training.steps, r.training.epochs), (None, Some(2)));
}

#[test]
fn validate_works_on_recipes_built_in_code() {
    let mut r = Recipe::default();
    validate(&mut r, "code").unwrap();
    assert_eq!(r.training.steps, Some(DEFAULT_STEPS));
    r.checkpoint.keep = 1;
    let e = validate(&mut r, "code").unwrap_err();
    blames(&e, "code", "checkpoint.keep", &[]);
    let mut r = Recipe::default();
    r.run.seed = u64::MAX;
    blames(&validate(&mut r, "code").unwrap_err(), "code", "run.seed", &[]);
    // Unvalidated odd values still serialize without panicking.
    let text = to_toml_string(&r);
    assert!(text.contains("[run]"));
}
