//! The iframe SDK files, compiled into the binary (`supervisor/sdk/`), with their ETags computed
//! once.

use std::sync::OnceLock;

const IFRAME_BRIDGE: &str = include_str!("../../sdk/iframe-bridge.js");
const EXTENSION: &str = include_str!("../../sdk/extension.js");

/// The file's text and strong ETag, for `iframe-bridge.js` and `extension.js`.
pub fn file(name: &str) -> Option<(&'static str, &'static str)> {
    static ETAGS: OnceLock<[String; 2]> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        [
            crate::registry::ui_tree::etag_of(IFRAME_BRIDGE.as_bytes()),
            crate::registry::ui_tree::etag_of(EXTENSION.as_bytes()),
        ]
    });
    match name {
        "iframe-bridge.js" => Some((IFRAME_BRIDGE, etags[0].as_str())),
        "extension.js" => Some((EXTENSION, etags[1].as_str())),
        _ => None,
    }
}
