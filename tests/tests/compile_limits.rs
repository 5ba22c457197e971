//! The compile sandbox's own limits: a compilation that takes too long, or needs more memory than
//! the operator allows, fails with an error naming the limit and its setting, and its sandbox is
//! killed and reaped.

use std::time::Duration;

use alga_runner::exec::artifacts::ArtifactError;
use alga_runner::exec::executor;
use alga_tests::server::wait_until;
use alga_tests::{Harness, fixture_bytes, skip_unless};

fn compile(h: &Harness, name: &str) -> Result<(), ArtifactError> {
    h.rt.block_on(executor::compile(&h.core, &fixture_bytes(name))).map(|_| ())
}

/// Compiles `echo` and expects it refused with a message holding each of `said`; then the
/// compile sandbox must be gone.
fn assert_refused(h: &Harness, said: &[&str]) {
    let fork_server = h.core.spawner.fork.pid();
    match compile(h, "echo") {
        Err(ArtifactError::Invalid(message)) => {
            for s in said {
                assert!(message.contains(s), "{s:?} in {message:?}");
            }
        }
        other => panic!("expected a refusal saying {said:?}, got {other:?}"),
    }
    wait_until("the compile sandbox reaped", || alga_tests::children_of(fork_server).is_empty());
}

#[test]
fn a_compilation_past_its_time_limit_is_stopped() {
    let h = Harness::with(|s| s.compile_timeout = Duration::from_millis(1));
    assert_refused(&h, &["did not finish within 1 ms", "sandbox.compile_timeout_ms"]);
    // Under a limit that allows it, the same component compiles.
    let h = Harness::with(|s| s.compile_timeout = Duration::from_secs(60));
    compile(&h, "echo").expect("compiling within the limit");
}

#[test]
fn a_compilation_over_its_memory_limit_is_killed() {
    let h = Harness::with(|s| s.compile_memory_bytes = 1 << 20);
    skip_unless!(
        h.core.spawner.cgroups.version().is_some(),
        "no cgroup memory controller to limit the compile sandbox"
    );
    assert_refused(&h, &["1 MiB of memory", "sandbox.compile_memory_mb"]);
}
