//! `--set` overrides: typed values, errors blamed on `--set`, and the resolved recipe after them.

use super::*;

#[test]
fn overrides_apply_with_types() {
    let r = parse(
        "[training]\nsteps = 3\n",
        "r.toml",
        Path::new("."),
        &sets(&[
            "training.steps=7",
            "optimizer.lr=0.5",
            "optimizer.betas=[0.8, 0.95]",
            "checkpoint.on_oom=false",
            "micro_batch.initial=16",
            "run.name=123",
            "run.backend=\"ndarray\"",
            "run.gpu_memory_limit=8GiB",
            "data.label_column=2",
            "model.n_layer=4",
            "model.kind=gpt",
            "model.attn.heads=2",
            "faults.oom_at=[{ step = 2, phase = \"backward\" }]",
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.training.steps, Some(7));
    assert_eq!(r.optimizer.lr, 0.5);
    assert_eq!(r.optimizer.betas, [0.8, 0.95]);
    assert!(!r.checkpoint.on_oom);
    assert_eq!(r.micro_batch.initial, MicroInitial::Fixed(16));
    assert_eq!(r.run.name, "123");
    assert_eq!(r.run.backend, crate::Backend::Ndarray);
    assert_eq!(r.run.gpu_memory_limit.as_deref(), Some("8GiB"));
    assert_eq!(r.data.label_column.as_deref(), Some("2"));
    assert_eq!(r.model.kind, "gpt");
    assert_eq!(r.model.params["n_layer"].as_integer(), Some(4));
    assert_eq!(r.model.params["attn"]["heads"].as_integer(), Some(2));
    assert_eq!(r.faults.oom_at, vec![FaultAt { step: 2, phase: Phase::Backward, rank: None }]);

    let r =
        parse("[micro_batch]\ninitial = 8\n", "r.toml", Path::new("."), &sets(&["micro_batch.initial=auto"])).unwrap();
    assert_eq!(r.micro_batch.initial, MicroInitial::Auto);
    // Later overrides win.
    let r = parse("", "r.toml", Path::new("."), &sets(&["run.seed=1", "run.seed=2"])).unwrap();
    assert_eq!(r.run.seed, 2);
    // Switching the run length unit from the command line.
    let r = parse("[training]\nepochs = 3\n", "r.toml", Path::new("."), &sets(&["training.steps=5"])).unwrap();
    assert_eq!((r.training.steps, r.training.epochs), (Some(5), None));
}

#[test]
fn override_errors() {
    let e = err_with("", &["training.stepz=3"]);
    blames(&e, "--set", "training.stepz", &["steps", "epochs", "effective_batch", "did you mean `training.steps`"]);
    let e = err_with("", &["optimiser.lr=3"]);
    blames(&e, "--set", "optimiser.lr", &["[optimizer]", "did you mean `optimizer.lr`"]);
    let e = err_with("", &["steps=3"]);
    assert!(e.to_string().contains("section.key=value"), "{e}");
    let e = err_with("", &["training.steps"]);
    assert!(e.to_string().contains("no `=`"), "{e}");
    // Bad values from --set are blamed on --set, with the value.
    let e = err_with("", &["training.effective_batch=0"]);
    blames(&e, "--set", "training.effective_batch", &["= 0"]);
    let e = err_with("", &["training.effective_batch=many"]);
    blames(&e, "--set", "training.effective_batch", &["\"many\"", "non-negative integer"]);
    let e = err_with("", &["faults.oom_at=[{ step = 0, phase = \"eval\" }]"]);
    blames(&e, "--set", "faults.oom_at[0].step", &[]);
    let e = err_with("[training]\nsteps = 5\n", &["training.epochs=2", "training.steps=3"]);
    assert_eq!(e.origin, "--set", "{e}");
    // ...while the file's own mistakes stay the file's.
    let e = err_with("[checkpoint]\nkeep = 1\n", &["training.steps=5"]);
    assert_eq!(e.origin, "r.toml");
}

#[test]
fn resolved_recipe_round_trips_after_overrides() {
    let r = parse("[model]\nkind = \"gpt\"\n", "r.toml", Path::new("."), &sets(&["model.d=3", "training.epochs=1"]))
        .unwrap();
    let back = parse(&to_toml_string(&r), "resolved.toml", Path::new("."), &[]).unwrap();
    assert_eq!(back, r);
}
