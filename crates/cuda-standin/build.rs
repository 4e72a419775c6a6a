//! Gives the cdylib the ELF soname `libcuda.so`: glibc's `dlopen` matches a requested name
//! against the sonames of objects already loaded, so once a test has loaded
//! `libcuda_standin.so` by path, cudarc's later `dlopen("libcuda.so")` returns it instead of
//! searching the disk for a real driver.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
