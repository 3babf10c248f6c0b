//! Build-time inputs the compiler cannot see for itself: the migrations
//! `sqlx::migrate!` embeds, and the order in which the linker lays out
//! the functions a booted worker runs.
use std::env;
use std::path::Path;

fn main() {
    // `sqlx::migrate!` embeds the directory; cargo would not otherwise
    // notice a migration being added.
    println!("cargo:rerun-if-changed=migrations");
    order_hot_functions();
}

/// The functions a worker runs once booted (its idle loop, the probes,
/// submissions) are laid out side by side at the start of `.text`.
///
/// The kernel maps a binary's code in chunks larger than a page around
/// each fault, and every chunk a worker touches counts in its RSS. Left to
/// the linker's default order, the little code a booted worker runs is
/// scattered over the whole of `.text`, so an idle worker keeps far more
/// of the binary resident than it runs (benches/RESULTS.md has the
/// figures). The list is `packaging/link/regenerate.sh`'s output: names
/// of functions, as the symbol table spells them; a name that no longer
/// exists (a dependency or the compiler changed) is skipped silently, so
/// a stale list costs memory, never a build; `packaging/test-deb.sh`
/// checks the packaged binary's layout and says when to regenerate.
///
/// Only with lld, rustc's default linker on x86_64-unknown-linux-gnu;
/// `SANDGNAT_LINK_ORDER=0` leaves the default order (for a toolchain set
/// to link with GNU ld, which has no such option).
fn order_hot_functions() {
    const ORDER: &str = "packaging/link/hot-functions.order";
    println!("cargo:rerun-if-changed={ORDER}");
    println!("cargo:rerun-if-env-changed=SANDGNAT_LINK_ORDER");
    let var = |key: &str| env::var(key).unwrap_or_default();
    let lld_target = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if !lld_target || var("SANDGNAT_LINK_ORDER") == "0" {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER);
    println!(
        "cargo:rustc-link-arg-bin=sandgnat=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=sandgnat=-Wl,--no-warn-symbol-ordering");
}
