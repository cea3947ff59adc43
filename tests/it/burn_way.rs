//! Data through burn's traits: the `burn_dataset` example (a program's own `Dataset`,
//! `Batcher` and burn-train model) trained with the full feature set from its debug recipe,
//! and models paired with data by batch type.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An example's binary, which `cargo test` builds with the test targets.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds the examples (or run `cargo build --example {name}` first)",
        bin.display()
    );
    bin
}

/// `burn_dataset ARGS...` in the repository root.
fn example(args: &[&str]) -> Output {
    let bin = example_binary("burn_dataset");
    Command::new(bin).args(args).current_dir(root()).output().expect("run the burn_dataset example")
}

/// The README's shortest complete program trains on the shipped digits.
#[test]
fn the_shortest_program_of_the_readme_trains_from_its_recipe() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = Command::new(example_binary("linear"))
        .args(["train", "configs/linear-debug.toml", "--run-dir", run.to_str().unwrap()])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&run);
    assert_eq!(s.steps, 60);
    let loss = s.valid_loss.expect("a validation loss");
    assert!(loss < 1.0, "valid loss {loss} (ln 10 = 2.30 is chance)");
}

/// `burn_dataset train configs/burn-dataset-debug.toml --run-dir RUN ARGS...`.
fn train_example(run: &Path, args: &[&str]) -> Output {
    let mut a = vec!["train", "configs/burn-dataset-debug.toml", "--run-dir", run.to_str().unwrap()];
    a.extend_from_slice(args);
    example(&a)
}

#[test]
fn the_burn_dataset_example_trains_checkpoints_resumes_and_reports_from_its_debug_recipe() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = train_example(&run, &["--set", "training.steps=20"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&run);
    assert_eq!((s.steps, s.samples_seen), (20, 20 * 64));
    assert!(run.join("checkpoints").join("step-20").is_dir(), "{}", text(&o));
    assert!(run.join("report.png").is_file() && run.join("model.safetensors").is_file());
    let params = tensors(&run.join("model.safetensors"));
    assert!(params.contains_key("model.conv1.weight"), "{:?}", params.keys());

    // Resumed from step 20 to the recipe's 30 steps: it learned the digits.
    let o = train_example(&run, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&run);
    assert_eq!((s.steps, s.resumes), (30, 1), "{}", text(&o));
    let acc = s.valid_accuracy.expect("accuracy from ClassificationOutput");
    assert!(acc > 0.6, "valid accuracy {acc}");

    // `oomph report` reads the run like any other.
    let o = oomph(&["report", run.to_str().unwrap()]);
    assert!(o.status.success() && text(&o).contains("burn-dataset-debug"), "{}", text(&o));
}

/// A simulated device with room for 20 images: the micro-batch shrinks, the effective batch
/// stays 64, and the parameters are those of a run that never ran out of memory.
#[test]
fn the_burn_dataset_example_survives_simulated_memory_limits_with_exact_accumulation() {
    let d = tempfile::tempdir().unwrap();
    let (free, limited) = (d.path().join("free"), d.path().join("limited"));
    let o = train_example(&free, &["--no-supervise", "--set", "micro_batch.initial=64"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train_example(&limited, &["--set", "micro_batch.initial=64", "--set", "faults.simulate_memory_samples=20"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&limited);
    assert_eq!((s.steps, s.samples_seen), (30, 30 * 64));
    assert!(s.oom_events > 0 && s.micro_batch_final <= 20, "{s:?}");
    let diff = max_param_diff(&free, &limited);
    assert!(diff < crate::accumulation::TOL, "max |diff| {diff:e}");
}

/// A recipe of model `model` (its default keys) on `data` (the lines of a `[data]` section),
/// written into `dir`.
fn pair(dir: &Path, model: &str, data: &str) -> String {
    let digits = root().join("data").join("digits.csv");
    let text = format!(
        "[model]\nkind = \"{model}\"\n[data]\n{}\n[training]\nsteps = 2\neffective_batch = 8\n",
        data.replace("DIGITS", &format!("{:?}", digits.display().to_string()))
    );
    write_recipe(dir, &format!("{model}.toml"), &text).display().to_string()
}

const CSV: &str = "kind = \"csv\"\npath = DIGITS\nlabel_column = \"label\"";
const PROGRAM: &str = "kind = \"program\"\nname = \"digit-images\"\npath = DIGITS";

#[test]
fn a_model_and_data_of_other_batch_types_are_refused_at_check_naming_both_kinds() {
    let d = tempfile::tempdir().unwrap();
    // A built-in model on built-in data of another batch type.
    let o = oomph(&["check", &pair(d.path(), "gpt", CSV)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    for part in ["model.kind = \"gpt\"", "data.kind = \"csv\"", "`TokenBatch`", "`TabularBatch`", "Fix:"] {
        assert!(t.contains(part), "{part:?} missing from: {t}");
    }
    assert!(!t.contains("panicked"), "{t}");
    // A built-in model on the program's data.
    let o = example(&["check", &pair(d.path(), "mlp", PROGRAM)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    for part in ["model.kind = \"mlp\"", "data.name = \"digit-images\"", "`TabularBatch`", "`DigitBatch`"] {
        assert!(t.contains(part), "{part:?} missing from: {t}");
    }
    // The example's own pair passes.
    let o = example(&["check", "configs/burn-dataset-debug.toml"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn program_data_that_is_not_registered_is_refused_with_the_registered_names() {
    let o = example(&["check", "configs/burn-dataset-debug.toml", "--set", "data.name=digit-imgs"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("\"digit-imgs\"") && t.contains("\"digit-images\""), "{t}");
    // oomph's own binary registers no program data.
    let d = tempfile::tempdir().unwrap();
    let o = oomph(&["check", &pair(d.path(), "mlp", PROGRAM)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("registers no data of its own"), "{}", text(&o));
    // `data.name` without program data, and program data without a name.
    let o = oomph(&["check", "configs/digits-mlp-debug.toml", "--set", "data.name=digit-images"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("data.name"), "{}", text(&o));
    let o = oomph(&["check", "configs/digits-mlp-debug.toml", "--set", "data.kind=program"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("`data.name` is missing"), "{}", text(&o));
}

/// `data/digits-images` holds the csv's rows as written by `examples/digits_images.rs`: row
/// `i` is `<label>/<i>.png`, pixel `v` the grey level `round(v * 255 / 16)`.
#[test]
fn the_shipped_digit_images_are_the_csv_rows() {
    let csv = std::fs::read_to_string(root().join("data").join("digits.csv")).unwrap();
    let rows: Vec<Vec<u32>> =
        csv.lines().skip(1).map(|l| l.split(',').map(|v| v.trim().parse().unwrap()).collect()).collect();
    let dir = root().join("data").join("digits-images");
    let mut files = 0;
    for class in std::fs::read_dir(&dir).unwrap() {
        files += std::fs::read_dir(class.unwrap().path()).unwrap().count();
    }
    assert_eq!(files, rows.len(), "one image per row");
    for (i, row) in rows.iter().enumerate() {
        let path = dir.join(row[64].to_string()).join(format!("{i:04}.png"));
        let image = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_luma8();
        let grey: Vec<u8> = row[..64].iter().map(|&v| ((v * 255 + 8) / 16) as u8).collect();
        assert_eq!((image.width(), image.height()), (8, 8), "{}", path.display());
        assert_eq!(image.into_raw(), grey, "{}", path.display());
    }
}

/// `configs/digits-cnn-debug.toml` through the `oomph` binary: it learns, and with room for 12
/// images on a simulated device, or stopped at step 20 and resumed, it ends with the
/// parameters of the undisturbed run.
#[test]
fn the_cnn_trains_on_the_image_folder_through_ooms_and_a_resume() {
    let d = tempfile::tempdir().unwrap();
    let run = |name: &str, args: &[&str]| {
        let dir = d.path().join(name);
        let mut a = vec!["train", "configs/digits-cnn-debug.toml", "--run-dir", dir.to_str().unwrap()];
        a.extend_from_slice(args);
        let o = oomph(&a);
        assert!(o.status.success(), "{}", text(&o));
        dir
    };
    let free = run("free", &["--no-supervise"]);
    let s = summary(&free);
    assert_eq!(s.steps, 40);
    let acc = s.valid_accuracy.expect("accuracy");
    assert!(acc > 0.5, "valid accuracy {acc}");
    let limited = run("limited", &["--set", "faults.simulate_memory_samples=12"]);
    let s = summary(&limited);
    assert!(s.oom_events > 0 && s.micro_batch_final <= 12, "{s:?}");
    let d_limited = max_param_diff(&free, &limited);
    run("resumed", &["--no-supervise", "--set", "training.steps=20"]);
    let resumed = run("resumed", &["--no-supervise"]);
    assert_eq!(summary(&resumed).resumes, 1);
    let d_resumed = max_param_diff(&free, &resumed);
    assert!(
        d_limited < crate::accumulation::TOL && d_resumed < crate::accumulation::TOL,
        "{d_limited:e} {d_resumed:e}"
    );
}

#[test]
fn image_folders_are_checked_and_paired_by_type() {
    let d = tempfile::tempdir().unwrap();
    let folder = "kind = \"image_folder\"\npath = IMAGES";
    let write = |model: &str, data: &str| {
        let images = root().join("data").join("digits-images");
        pair(d.path(), model, &data.replace("IMAGES", &format!("{:?}", images.display().to_string())))
    };
    let o = oomph(&["check", &write("mlp", folder)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    for part in ["model.kind = \"mlp\"", "data.kind = \"image_folder\"", "`TabularBatch`", "`ImageBatch`"] {
        assert!(text(&o).contains(part), "{part:?} missing from: {}", text(&o));
    }
    assert!(oomph(&["check", &write("cnn", folder)]).status.success());
    // A file where a folder belongs.
    let o = oomph(&["check", &pair(d.path(), "cnn", "kind = \"image_folder\"\npath = DIGITS")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("it is not a folder"), "{}", text(&o));
    // Images of two sizes.
    let odd = d.path().join("odd");
    for (class, side) in [("a", 8), ("b", 9)] {
        std::fs::create_dir_all(odd.join(class)).unwrap();
        image::GrayImage::new(side, side).save(odd.join(class).join("0.png")).unwrap();
    }
    let o = oomph(&[
        "check",
        &pair(d.path(), "cnn", &format!("kind = \"image_folder\"\npath = {:?}", odd.display().to_string())),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("b/0.png") && text(&o).contains("9x9"), "{}", text(&o));
}

/// A program's data loader that panics is a bad-input error naming the data, not a crash.
#[test]
fn a_panicking_data_loader_is_refused_with_its_message() {
    use oomph::train::{Data, DataRequest, Registry};
    let d = tempfile::tempdir().unwrap();
    let recipe = oomph::recipe::load(std::path::Path::new(&pair(d.path(), "mlp", PROGRAM)), &[]).unwrap();
    let mut registry = Registry::<B>::new();
    registry
        .add_data("digit-images", "panics", |_: &DataRequest| -> Result<Data<B>, String> { panic!("no disk today") });
    let e = registry.load_data(&recipe, "r.toml", Default::default()).err().expect("an error").to_string();
    assert!(e.contains("data.name = \"digit-images\"") && e.contains("no disk today") && e.contains("Fix:"), "{e}");
}

/// The README's program refuses data it cannot take at `check`, rather than panicking.
#[test]
fn the_shortest_program_refuses_regression_data_at_check() {
    let d = tempfile::tempdir().unwrap();
    let r = pair(d.path(), "linear", "kind = \"synthetic\"\ntask = \"regression\"");
    let o = Command::new(example_binary("linear")).args(["check", &r]).current_dir(root()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("classification") && !text(&o).contains("panicked"), "{}", text(&o));
}

/// An image whose header reads but whose pixels do not decode stops the run as bad input
/// (exit 2) naming the file, without a panic's text.
#[test]
fn an_image_that_does_not_decode_is_named_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let folder = d.path().join("images");
    let shipped = root().join("data").join("digits-images");
    for class in std::fs::read_dir(&shipped).unwrap() {
        let class = class.unwrap().path();
        let to = folder.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(&class).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    let bad = folder.join("3").join("0003.png");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..80]).unwrap();
    let path = format!("data.path={}", folder.display());
    let run = d.path().join("run");
    let args = ["train", "configs/digits-cnn-debug.toml", "--run-dir", run.to_str().unwrap(), "--set", &path];
    let o = oomph(&args);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("0003.png") && t.contains("cannot be decoded") && t.contains("Fix:"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
