//! libFuzzer target: `sandgnat::fuzz::executable` (what it drives and what
//! it checks is said there), with the panics the parser catches itself let
//! pass (`sandgnat::fuzz::tolerate_caught_panics`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        sandgnat::fuzz::tolerate_caught_panics();
    },
    |data: &[u8]| {
        sandgnat::fuzz::executable(data);
    }
);
