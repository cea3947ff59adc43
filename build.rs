//! With the `tch` feature, the binaries, tests, examples and benchmarks of this package find
//! libtorch at run time through an rpath to the directory torch-sys linked against, so nobody
//! exports `LD_LIBRARY_PATH` by hand. The directory is found as torch-sys finds it: PyTorch's
//! own `torch/lib` when `LIBTORCH_USE_PYTORCH` is set (the Python that torch-sys runs: `python`
//! in an active virtual environment, else `python3`), else `LIBTORCH_LIB` or `LIBTORCH`
//! followed by `lib`. Without the feature this does nothing.

use std::path::PathBuf;

fn main() {
    for var in ["LIBTORCH_USE_PYTORCH", "LIBTORCH", "LIBTORCH_LIB", "VIRTUAL_ENV", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    match libtorch_lib() {
        Some(dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display()),
        None => println!(
            "cargo:warning=oomph: the tch feature could not find libtorch's directory for an rpath; run the \
             binary with LD_LIBRARY_PATH set to it, or build with scripts/setup-tch.sh"
        ),
    }
}

fn libtorch_lib() -> Option<PathBuf> {
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = std::process::Command::new(python)
            .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
            .output()
            .ok()?;
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        return dir.is_dir().then_some(dir);
    }
    let dir = match std::env::var_os("LIBTORCH_LIB") {
        Some(lib) => PathBuf::from(lib).join("lib"),
        None => PathBuf::from(std::env::var_os("LIBTORCH")?).join("lib"),
    };
    dir.is_dir().then_some(dir)
}
