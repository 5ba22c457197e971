//! The path and `Range` header of an `/ext-ui/…` request: the sanitizer must never hand back a
//! segment that climbs out of the UI tree, hides a file or carries a separator.
#![no_main]

use alga_runner::service::ui::{Range, clean_path, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(segments) = clean_path(text) {
        for s in &segments {
            assert!(!s.is_empty() && s != "." && s != ".." && !s.starts_with('.'), "{s:?} from {text:?}");
            assert!(!s.contains('/') && !s.contains('\\') && !s.chars().any(char::is_control), "{s:?}");
        }
    }
    for len in [0u64, 1, 100, u64::MAX] {
        if let Range::Part(start, end) = parse_range(text, len) {
            assert!(start <= end && end < len, "{start}-{end} of {len} from {text:?}");
        }
    }
});
