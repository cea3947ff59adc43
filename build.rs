//! With the `tch` feature, the binaries, tests, examples and benchmarks of this package find
//! libtorch at run time through an rpath to the directory torch-sys linked against (its
//! `links = "tch"` metadata, `DEP_TCH_LIBTORCH_LIB`), so nobody exports `LD_LIBRARY_PATH` by
//! hand. Without the feature this does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) => println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}"),
        Err(_) => panic!(
            "oomph: the tch feature needs libtorch's directory from torch-sys (DEP_TCH_LIBTORCH_LIB), \
             which it did not give. Fix: build with scripts/setup-tch.sh."
        ),
    }
}
