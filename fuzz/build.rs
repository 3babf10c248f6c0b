//! libyara (linked in through the appliance) defines its own `memmem`, and
//! so do libFuzzer's interceptors: the linker keeps the first definition
//! (libyara's, which comes first) instead of refusing both. Only the fuzz
//! targets are linked this way; the appliance's own build is untouched.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--allow-multiple-definition");
}
