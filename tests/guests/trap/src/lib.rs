//! Traps in `handler`: `?kind=unreachable` (default) executes `unreachable`; `?kind=recursion`
//! recurses until the stack overflows; `?kind=status` returns an invalid status code.
include!("../../common/guest.rs");

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    core::hint::black_box(recurse(core::hint::black_box(n + 1)) + 1)
}

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        match query_param(&request.http.url, "kind").as_deref() {
            Some("recursion") => {
                let n = recurse(0);
                respond(200, "text/plain", n.to_string().into_bytes())
            }
            Some("status") => respond(1000, "text/plain", b"bad status".to_vec()),
            _ => core::arch::wasm32::unreachable(),
        }
    }
}
