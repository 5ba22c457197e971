//! A bundle's bytes as a publisher uploads them (tar inside zstd), read with the service's
//! limits scaled down so the fuzzer explores the format rather than the size limits.
#![no_main]

use alga_shared::bundle::{ArchiveLimits, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits { max_compressed: 1 << 20, max_uncompressed: 8 << 20, ..ArchiveLimits::default() };
    if let Ok(bundle) = open(data, &limits) {
        assert!(bundle.files.keys().all(|p| !p.starts_with('/') && !p.split('/').any(|s| s == "..")));
    }
});
