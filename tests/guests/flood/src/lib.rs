//! Calls a host API in a loop: `?calls=N` times (default: forever), `?payload=BYTES` of storage
//! key per call to also exhaust the payload budget.
include!("../../common/guest.rs");

use alga::extension::{config, context};

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let calls: u64 = query_param(&request.http.url, "calls").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        let payload: usize = query_param(&request.http.url, "payload").and_then(|v| v.parse().ok()).unwrap_or(0);
        let big = "k".repeat(payload);
        let mut done = 0u64;
        while done < calls {
            if payload > 0 {
                core::hint::black_box(config::get(&big));
            } else {
                core::hint::black_box(context::get_context());
            }
            done += 1;
        }
        respond(200, "text/plain", done.to_string().into_bytes())
    }
}
