//! Link-time settings of the `arbiter` binary.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    // Relative relocations packed (DT_RELR): the position-independent executable has ~69,000
    // pointers the loader relocates at start, and their table shrinks from 1.6 MiB (24 bytes
    // each, all of it read into memory at start and kept resident) to 25 KiB. The loader must
    // know DT_RELR (glibc 2.36 and later; the binary then names `GLIBC_ABI_DT_RELR`, so an
    // older glibc refuses it at start rather than running it unrelocated). Only for a binary
    // built for the machine that builds it, whose glibc is asked.
    if var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("TARGET") == var("HOST")
        && glibc_at_least(2, 36)
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The functions the server runs while serving, linked first and together (release builds
    // on x86-64 Linux, where rustc links with its lld). Once serving, `arbiter serve` unmaps its
    // executable's pages and each page fault maps back 64 KiB around it: scattered through
    // 21 MiB of code, the ~3 MiB a check uses drew 11 MiB back into the resident set
    // (benches/RESULTS.md, "Memory"). `benches/code_order.py` writes the list; a name lld does
    // not find is skipped (a stale list costs memory, not correctness). With another linker,
    // set ARBITER_CODE_ORDER=off.
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("code-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=ARBITER_CODE_ORDER");
    if var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("PROFILE") == "release"
        && var("ARBITER_CODE_ORDER") != "off"
        && order.is_file()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether this machine's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is at least
/// `major.minor`; false when it cannot say.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
