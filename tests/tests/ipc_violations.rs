//! A compromised sandbox on the IPC channel: garbage, oversized lengths, truncated frames, wrong
//! protocol versions, out-of-order replies, floods. Each is killed and recorded as a protocol
//! violation, and the same supervisor keeps serving normal executions.

use alga_shared::frame::{self, DEFAULT_MAX_FRAME};
use alga_shared::limits::Limits;
use alga_shared::outcome::Outcome;
use alga_shared::protocol::{LogLevel, ProbeAction, SandboxMsg};
use alga_tests::Harness;

fn violation(h: &Harness, action: ProbeAction) -> String {
    let report = h.probe(action.clone());
    match report.outcome {
        Outcome::ProtocolViolation { detail } => detail,
        other => panic!("{action:?}: expected a protocol violation, got {other:?} ({:?})", report.detail),
    }
}

fn still_serving(h: &Harness) {
    let report = h.execute("echo", "/still-serving", Limits::default(), &[]);
    assert_eq!(report.outcome, Outcome::Completed, "{:?}", report.detail);
}

#[test]
fn garbage_and_malformed_frames_are_violations() {
    let h = Harness::new();

    let detail =
        violation(&h, ProbeAction::RawBytes { bytes: vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0xff, 0xff, 0xff, 0xff] });
    assert!(!detail.is_empty());
    still_serving(&h);

    let mut huge = u32::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&[1, 0]);
    let detail = violation(&h, ProbeAction::RawBytes { bytes: huge });
    assert!(detail.contains("exceeds the limit"), "{detail}");
    still_serving(&h);

    let mut wrong_version =
        frame::encode(&SandboxMsg::Log { level: LogLevel::Info, message: "x".into() }, DEFAULT_MAX_FRAME).unwrap();
    wrong_version[4] = 0x7f;
    let detail = violation(&h, ProbeAction::RawBytes { bytes: wrong_version });
    assert!(detail.contains("protocol version"), "{detail}");
    still_serving(&h);
}

#[test]
fn out_of_order_calls_and_truncated_frames_are_violations() {
    let h = Harness::new();
    let detail = violation(&h, ProbeAction::WrongCallId);
    assert!(detail.contains("host call id 7, expected 0"), "{detail}");
    still_serving(&h);

    // Half a header, then the sandbox exits: a truncated frame.
    let report = h.probe(ProbeAction::RawBytesThenExit { bytes: vec![9, 0] });
    assert!(matches!(report.outcome, Outcome::ProtocolViolation { .. }), "{:?} {:?}", report.outcome, report.detail);
    still_serving(&h);
}

#[test]
fn a_message_flood_is_stopped() {
    let h = Harness::new();
    let detail = violation(&h, ProbeAction::FloodLogs { count: 200_000 });
    assert!(detail.contains("log flood"), "{detail}");
    still_serving(&h);
}
