//! Links the `spillway` binaries as position-dependent executables on Linux: a PIE of this
//! size carries ~280,000 relative relocations that the dynamic loader applies at every start
//! (about 4 ms, half the run time of a small query), while no address randomisation of the
//! executable itself is lost that a command-line tool needs.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
