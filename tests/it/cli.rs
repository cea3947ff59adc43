//! The `oomph` binary end to end: recipes in, run directory out, bad input rejected with
//! exit code 2 and a one-paragraph message.

use crate::util::*;

#[test]
fn train_writes_a_complete_run_directory() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = oomph(&["train", "configs/digits-mlp-debug.toml", "--run-dir", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in ["valid accuracy", "micro-batch", "report.png", "model.safetensors"] {
        assert!(out.contains(needle), "summary on stdout lacks {needle}: {out}");
    }
    for f in [
        "recipe.resolved.toml",
        "metrics.jsonl",
        "events.jsonl",
        "summary.json",
        "model.safetensors",
        "report.png",
        "report.svg",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let steps = step_records(&run);
    assert_eq!(steps.len(), 30);
    for k in ["step", "samples_seen", "loss", "lr", "micro_batch", "chunks", "samples_per_sec", "wall_s"] {
        assert!(!steps[0][k].is_null(), "metrics.jsonl lacks {k}");
    }
    let evals = lines(&run.join("metrics.jsonl")).into_iter().filter(|v| v["kind"] == "eval").count();
    assert_eq!(evals, 3, "eval_every = 10 over 30 steps");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["steps"], 30);
    assert_eq!(s["samples_seen"], 30 * 64);
    assert!(s["valid_accuracy"].as_f64().unwrap() > 0.5, "{s}");
    for k in [
        "train_loss",
        "valid_loss",
        "wall_s",
        "oom_events",
        "micro_batch_final",
        "micro_batch_history",
        "recovery_s",
        "restarts",
        "resumes",
    ] {
        assert!(!s[k].is_null(), "summary.json lacks {k}");
    }
    // The resolved recipe is a valid recipe with every default filled in.
    let resolved = std::fs::read_to_string(run.join("recipe.resolved.toml")).unwrap();
    assert!(resolved.contains("grow_after"), "{resolved}");
    let again = oomph(&["check", run.join("recipe.resolved.toml").to_str().unwrap()]);
    assert!(again.status.success(), "{}", text(&again));
    // Plain progress lines when stderr is not a terminal.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("step 30/30"), "{err}");
    assert!(err.contains("effective 64 = 1 chunk x 64"), "{err}");
}

#[test]
fn check_prints_the_resolved_recipe_with_overrides() {
    let o = oomph(&[
        "check",
        "configs/tiny-gpt-debug.toml",
        "--set",
        "training.effective_batch=12",
        "--set",
        "model.n_layer=3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let v: toml::Table = out.parse().unwrap();
    assert_eq!(v["training"]["effective_batch"].as_integer(), Some(12));
    assert_eq!(v["model"]["n_layer"].as_integer(), Some(3));
}

/// Each bad input exits 2 with one paragraph that names the key (or file) and a fix; never a
/// panic or a backtrace.
#[test]
fn bad_input_is_exit_code_2_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("configs/digits-mlp-debug.toml"))
        .unwrap()
        .replace("../data/", &format!("{}/data/", root().display()));
    let cases: Vec<(&str, String, Vec<&str>, Vec<&str>)> = vec![
        (
            "unknown key",
            base.replace("[training]", "[training]\neffective_batc = 3"),
            vec![],
            vec!["effective_batc", "effective_batch"],
        ),
        ("wrong type", base.clone(), vec!["training.effective_batch=\"lots\""], vec!["training.effective_batch"]),
        ("zero batch", base.clone(), vec!["training.effective_batch=0"], vec!["training.effective_batch", "Fix"]),
        ("min > max", base.clone(), vec!["micro_batch.min=9", "micro_batch.max=4"], vec!["micro_batch.min"]),
        ("lr <= 0", base.clone(), vec!["optimizer.lr=0"], vec!["optimizer.lr"]),
        ("missing file", base.replace("digits.csv", "nope.csv"), vec![], vec!["nope.csv"]),
        ("keep 1", base.clone(), vec!["checkpoint.keep=1"], vec!["checkpoint.keep"]),
        ("unknown model", base.replace("kind = \"mlp\"", "kind = \"resnet\""), vec![], vec!["model.kind", "mlp"]),
        ("bad model key", base.replace("hidden = [32]", "hiden = [32]"), vec![], vec!["hiden"]),
        ("bad --set syntax", base.clone(), vec!["training.steps"], vec!["--set"]),
        ("toml syntax", base.replace("[training]", "[training"), vec![], vec!["bad.toml"]),
    ];
    for (what, body, sets, needles) in cases {
        let p = write_recipe(d.path(), "bad.toml", &body);
        let mut args = vec!["train", p.to_str().unwrap(), "--no-supervise"];
        let run = d.path().join("run");
        args.extend(["--run-dir", run.to_str().unwrap()]);
        for s in &sets {
            args.extend(["--set", s]);
        }
        let o = oomph(&args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{what}: {}", text(&o));
        for n in needles {
            assert!(err.contains(n), "{what}: message lacks {n:?}: {err}");
        }
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one paragraph expected: {err}");
    }
    let o = oomph(&["train", "does/not/exist.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn cuda_without_cuda_support_is_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = oomph(&[
        "train",
        "configs/digits-mlp-debug.toml",
        "--set",
        "run.backend=cuda",
        "--no-supervise",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cuda"), "{}", text(&o));
}

/// `oomph check` refuses what `oomph train` refuses about the backend before it opens a
/// device: a memory limit on a CPU backend, and a backend this binary was built without.
#[test]
fn check_refuses_a_backend_train_would_refuse() {
    let mut bad = vec!["run.gpu_memory_limit=\"1GiB\""];
    if !cfg!(feature = "cuda") {
        bad.push("run.backend=cuda");
    }
    if !cfg!(feature = "tch") {
        bad.push("run.backend=tch");
    }
    for set in bad {
        let o = oomph(&["check", "configs/digits-mlp-debug.toml", "--set", set]);
        assert_eq!(o.status.code(), Some(2), "{set}: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stderr).matches("error:").count(), 1, "{set}: {}", text(&o));
        assert!(o.stdout.is_empty(), "{set}: nothing printed as a resolved recipe");
    }
}

/// A program built with `oomph::main!` (the `oomph` binary) installs the allocation tracker
/// and says nothing about it; one that trains through `main_with` without it (as this test
/// binary would) is told at start-up, with the line that fixes it.
#[test]
fn a_program_without_the_allocation_tracker_is_warned_at_start_up() {
    let o = oomph(&["check", "configs/digits-mlp-debug.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("allocation tracker"), "{}", text(&o));
    let warning = oomph::cli::tracker_warning().expect("this test binary keeps the system allocator");
    assert!(warning.starts_with("warning: ") && warning.contains("oomph::main!(YourModels);"), "{warning}");
    assert!(warning.contains("#[global_allocator]"), "{warning}");
}

/// Several ranks need the `distributed` feature: without it the recipe is refused with the
/// fix, before anything is written.
#[cfg(not(feature = "distributed"))]
#[test]
fn several_ranks_without_the_distributed_feature_is_a_clear_error() {
    let f = Fixture::new(&TestRecipe::mlp());
    let o = f.train("ranks", &["--no-supervise", "--set", "distributed.ranks=2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("--features distributed") && !t.contains("panicked"), "{t}");
}
