//! A frame body from a hostile peer, decoded as every message a receiver accepts: what a sandbox
//! sends the supervisor, what the supervisor sends a sandbox, and the fork server's control
//! messages both ways; and a host call's arguments. None may panic, and none may allocate past
//! the decode budget (libFuzzer's -rss_limit_mb catches that).
#![no_main]

use alga_shared::frame;
use alga_shared::protocol::{ForkEvent, ForkRequest, HostCall, PROTOCOL_VERSION, SandboxMsg, SupervisorMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut body = PROTOCOL_VERSION.to_le_bytes().to_vec();
    body.extend_from_slice(data);
    let _ = frame::decode::<SandboxMsg>(&body);
    let _ = frame::decode::<SupervisorMsg>(&body);
    let _ = frame::decode::<ForkRequest>(&body);
    let _ = frame::decode::<ForkEvent>(&body);
    let _ = frame::decode_value::<HostCall>(data);
    // The raw body too: a wrong version must be refused, never misread.
    let _ = frame::decode::<SandboxMsg>(data);
});
