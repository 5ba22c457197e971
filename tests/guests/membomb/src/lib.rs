//! Grows linear memory until something stops it. Must end with `memory_limit`.
include!("../../common/guest.rs");

impl Guest for Fixture {
    fn handler(_request: ExecuteRequest) -> ExecuteResponse {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Touch every page so the memory is really used, not just reserved.
            hoard.push(vec![1u8; 16 << 20]);
            core::hint::black_box(&hoard);
        }
    }
}
