//! Builds the eBPF programs in `../horcrux-ebpf` with the nightly toolchain and
//! bpf-linker, and leaves the object in `$OUT_DIR/horcrux-ebpf.o` for embedding.
//!
//! Without that toolchain the agent still builds: the object is left empty, the
//! build prints a warning naming `cargo xtask setup`, and the running agent
//! reports "not embedded" for every program in `/api/status`.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const OBJECT_NAME: &str = "horcrux-ebpf.o";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let ebpf_dir = manifest_dir.join("../horcrux-ebpf");
    for input in ["src", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(input).display());
    }
    println!("cargo:rerun-if-env-changed=PATH");

    let object = out_dir.join(OBJECT_NAME);
    if let Some(missing) = missing_toolchain() {
        println!(
            "cargo:warning=eBPF programs NOT embedded ({missing}); run `cargo xtask setup` and rebuild"
        );
        std::fs::write(&object, []).expect("write OUT_DIR");
        return;
    }
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir.join("../target"))
        .join("ebpf");
    let built = build_ebpf(&ebpf_dir, &target_dir);
    std::fs::copy(&built, &object).expect("copy eBPF object into OUT_DIR");
}

/// Names the first missing piece of the eBPF toolchain, if any.
fn missing_toolchain() -> Option<&'static str> {
    let nightly_runs = |tool: &str| {
        Command::new("rustup")
            .args(["run", "nightly", tool, "--version"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if !nightly_runs("rustc") {
        return Some("rustup or the nightly toolchain not found");
    }
    // bpf-linker loads the nightly toolchain's libLLVM, which `rustup run` puts on its library path.
    if !nightly_runs("bpf-linker") {
        return Some("bpf-linker not found or not working");
    }
    None
}

fn build_ebpf(ebpf_dir: &Path, target_dir: &Path) -> PathBuf {
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(ebpf_dir);
    // The outer (stable) cargo exports these for build scripts; they must not leak
    // into the nested nightly build for another target.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cargo.env_remove(var);
    }
    let output = cargo.output().expect("run rustup");
    if !output.status.success() {
        panic!(
            "building the eBPF programs failed (run `cargo xtask setup` if the toolchain is incomplete):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    target_dir.join("bpfel-unknown-none/release/horcrux-ebpf")
}
