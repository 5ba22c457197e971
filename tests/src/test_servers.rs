//! What the real servers the tests start (PostgreSQL, Garage) have in common: a free loopback
//! port, their directories under `/var/tmp` named after the test process (removed once that
//! process is gone), and being stopped when the test process exits.

use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Removes the directories `/var/tmp/<prefix><pid>-…` whose test process is gone.
pub fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix).and_then(|r| r.split('-').next())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The servers to signal at exit, and the signal for each.
static AT_EXIT: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];
static SIGNALS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];
static STARTED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn stop_servers() {
    for (pid, signal) in AT_EXIT.iter().zip(&SIGNALS) {
        let pid = pid.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: sends a signal to a server this test process started.
            unsafe { libc::kill(pid, signal.load(Ordering::SeqCst)) };
        }
    }
}

/// Sends `signal` to `pid` when the test process exits (a server it started).
pub fn stop_at_exit(pid: u32, signal: i32) -> Result<(), String> {
    let slot = STARTED.fetch_add(1, Ordering::SeqCst);
    let (p, s) = AT_EXIT.get(slot).zip(SIGNALS.get(slot)).ok_or("more than 16 servers in one test process")?;
    s.store(signal, Ordering::SeqCst);
    p.store(pid as i32, Ordering::SeqCst);
    static REGISTERED: Once = Once::new();
    // SAFETY: registers a plain function (it reads atomics and sends signals) to run at exit.
    REGISTERED.call_once(|| unsafe {
        libc::atexit(stop_servers);
    });
    Ok(())
}
