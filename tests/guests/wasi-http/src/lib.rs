//! Tries to reach the network around the host API: through `wasi:http/outgoing-handler`. The
//! runner does not provide that interface, so this component must not link.
include!("../../common/guest.rs");

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, OutgoingRequest, Scheme};

impl Guest for Fixture {
    fn handler(request: ExecuteRequest) -> ExecuteResponse {
        let target = query_param(&request.http.url, "authority").unwrap_or_else(|| "127.0.0.1:9".into());
        let out = OutgoingRequest::new(Fields::new());
        let _ = out.set_scheme(Some(&Scheme::Http));
        let _ = out.set_authority(Some(&target));
        let result = match outgoing_handler::handle(out, None) {
            Ok(_) => "sent".to_string(),
            Err(e) => format!("refused: {e:?}"),
        };
        respond(200, "text/plain", result.into_bytes())
    }
}
