//! Answers 32 bytes from `wasi:random` (hex) plus 16 from the insecure generator.
include!("../../common/guest.rs");

#[link(wasm_import_module = "wasi:random/random@0.2.0")]
unsafe extern "C" {
    #[link_name = "get-random-u64"]
    fn get_random_u64() -> i64;
}

#[link(wasm_import_module = "wasi:random/insecure@0.2.0")]
unsafe extern "C" {
    #[link_name = "get-insecure-random-u64"]
    fn get_insecure_random_u64() -> i64;
}

impl Guest for Fixture {
    fn handler(_request: ExecuteRequest) -> ExecuteResponse {
        let mut hex = String::new();
        for _ in 0..4 {
            // SAFETY: a WASI import with no arguments returning an integer.
            let v = unsafe { get_random_u64() } as u64;
            hex.push_str(&format!("{v:016x}"));
        }
        hex.push(':');
        for _ in 0..2 {
            // SAFETY: as above.
            let v = unsafe { get_insecure_random_u64() } as u64;
            hex.push_str(&format!("{v:016x}"));
        }
        respond(200, "text/plain", hex.into_bytes())
    }
}
