//! Never returns: a busy loop with no host calls. Must end with `timeout` (or `fuel_exhausted`
//! when the fuel budget is small).
include!("../../common/guest.rs");

impl Guest for Fixture {
    fn handler(_request: ExecuteRequest) -> ExecuteResponse {
        let mut x: u64 = 0;
        loop {
            x = core::hint::black_box(x.wrapping_add(1));
        }
    }
}
