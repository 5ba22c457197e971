//! Sleeps `?ms=N` milliseconds (default 20) through WASI clocks, then answers how long it slept.
include!("../../common/guest.rs");

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let ms: u64 = query_param(&request.http.url, "ms").and_then(|v| v.parse().ok()).unwrap_or(20);
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        respond(200, "text/plain", start.elapsed().as_millis().to_string().into_bytes())
    }
}
