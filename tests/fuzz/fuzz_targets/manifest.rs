//! `manifest.json` as a publisher writes it, validated as at publish (with and without the
//! bundle's file list).
#![no_main]

use std::collections::BTreeSet;

use alga_shared::manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = manifest::parse(data, None);
    let files: BTreeSet<String> = ["dist/main.wasm", "ui/index.html"].iter().map(|s| s.to_string()).collect();
    let _ = manifest::parse(data, Some(&files));
});
