//! An install's `secret_envelope` (the Alga inline form, with its expiry), opened as the service
//! opens it; and the RFC 3339 parser its expiry goes through.
#![no_main]

use alga_runner::service::secret_envelope::{SecretEnvelope, parse_rfc3339_ms};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_rfc3339_ms(text);
    }
    if let Ok(envelope) = serde_json::from_slice::<SecretEnvelope>(data) {
        let _ = envelope.open(1_795_608_000_000);
    }
});
