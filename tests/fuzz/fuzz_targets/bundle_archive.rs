//! A bundle's bytes as a publisher uploads them (tar inside zstd), read with the service's
//! limits scaled down so the fuzzer explores the format rather than the size limits. Most inputs
//! are taken as the tar and compressed here (a mutated compressed stream almost never gets past
//! zstd's checks, which would leave the archive reader unexplored); the rest go in as they are.
#![no_main]

use alga_shared::bundle::{ArchiveLimits, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ArchiveLimits { max_compressed: 1 << 20, max_uncompressed: 8 << 20, ..ArchiveLimits::default() };
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 8 == 0 { rest.to_vec() } else { zstd::bulk::compress(rest, 1).unwrap() };
    if let Ok(bundle) = open(&bytes, &limits) {
        assert!(bundle.files.keys().all(|p| !p.starts_with('/') && !p.split('/').any(|s| s == "..")));
    }
});
