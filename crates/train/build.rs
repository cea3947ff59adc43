//! With the `tch` feature, compiles `native/tch_cuda_memory.cpp`: LibTorch's CUDA cache
//! release and memory statistics, which neither tch nor burn-tch exposes. Its headers are
//! the ones of the libtorch torch-sys links (`DEP_TCH_LIBTORCH_LIB`, whose sibling is
//! `include/`). Without the feature this does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "tch")]
    tch_cuda_memory();
}

#[cfg(feature = "tch")]
fn tch_cuda_memory() {
    println!("cargo:rerun-if-changed=native/tch_cuda_memory.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_else(|_| {
        panic!(
            "oomph-train: the tch feature needs libtorch's directory from torch-sys (DEP_TCH_LIBTORCH_LIB), \
             which it did not give. Fix: build with scripts/setup-tch.sh."
        )
    });
    let include = std::path::Path::new(&lib).join("..").join("include");
    if !include.join("c10").join("core").join("CachingDeviceAllocator.h").exists() {
        panic!(
            "oomph-train: {} has no c10/core/CachingDeviceAllocator.h: this libtorch is not the 2.9 that \
             torch-sys 0.22 expects. Fix: build with scripts/setup-tch.sh (PyTorch 2.9.0).",
            include.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&include)
        .file("native/tch_cuda_memory.cpp")
        .compile("oomph_tch_cuda_memory");
    println!("cargo:rustc-link-lib=dl");
}
