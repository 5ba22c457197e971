//! The body of `POST /v1/execute` as the host (or anyone holding the service token) sends it,
//! parsed and turned into a command as the service does.
#![no_main]

use alga_runner::service::execute::parse_envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = parse_envelope(data) {
        let _ = envelope.into_command(Some("fuzz".into()), (None, None), None);
    }
});
