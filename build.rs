//! Link settings for the `spillway` binaries on x86_64 Linux, both for start-up time:
//!
//! - Position-dependent executables: a PIE of this size carries ~280,000 relative relocations
//!   that the dynamic loader applies at every start (about 4 ms, half the run time of a small
//!   query), while no address randomisation of the executable itself is lost that a
//!   command-line tool needs.
//! - Code laid out in the order of `src/link-order.txt` (written by `benches/link_order.py`):
//!   the functions a typical run executes sit together instead of spread over ~120 MB of
//!   machine code, so a run faults in far fewer code pages. lld (Rust's default linker on
//!   this target since 1.90) skips names the build no longer has; other linkers are left
//!   alone, and `SPILLWAY_LINK_ORDER=0` turns it off.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/link-order.txt");
    println!("cargo:rerun-if-env-changed=SPILLWAY_LINK_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    let wanted = std::env::var("SPILLWAY_LINK_ORDER").map_or(true, |v| v != "0");
    if wanted && target == "x86_64-unknown-linux-gnu" {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        let order = std::path::Path::new(&manifest).join("src/link-order.txt");
        // The linker gets a copy in OUT_DIR, not the source path: a target folder shared by
        // clones at different paths (CI's persistent cache) reuses this script's output, and a
        // path into a clone that was since deleted breaks every later link.
        let out = std::env::var("OUT_DIR").unwrap_or_default();
        let copy = std::path::Path::new(&out).join("link-order.txt");
        if order.is_file() && !out.is_empty() && std::fs::copy(&order, &copy).is_ok() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                copy.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
}
