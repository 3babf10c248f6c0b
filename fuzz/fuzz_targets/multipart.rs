//! libFuzzer target: `sandgnat::fuzz::multipart` (what it drives and what it
//! checks is said there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sandgnat::fuzz::multipart(data);
});
