//! Answers `?mb=N` MiB of body (default 11: over the 10 MiB response limit).
include!("../../common/guest.rs");

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let mb: usize = query_param(&request.http.url, "mb").and_then(|v| v.parse().ok()).unwrap_or(11);
        respond(200, "application/octet-stream", vec![b'x'; mb << 20])
    }
}
