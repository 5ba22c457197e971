//! Naming the syscall seccomp refused. A sandbox killed by seccomp dies with SIGSYS, and the
//! exit status does not say which call it was; the kernel writes it to the audit log (record type
//! 1326, `... pid=<pid> ... syscall=<nr> ...`), which reaches `/dev/kmsg` unless an audit daemon
//! takes it. The fork server reads those records when one of its children dies by SIGSYS. Without
//! access to `/dev/kmsg` (not root, `ProtectKernelLogs=`, auditd) the syscall is reported unknown.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// Records kept for children that have not been reaped yet.
const MAX_PENDING: usize = 256;

pub struct AuditLog {
    kmsg: Option<File>,
    seen: HashMap<u32, i64>,
}

impl AuditLog {
    /// Opens `/dev/kmsg` positioned at its end, so only new records are read.
    pub fn open() -> Self {
        let kmsg = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/kmsg")
            .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f))
            .ok();
        AuditLog { kmsg, seen: HashMap::new() }
    }

    pub fn available(&self) -> bool {
        self.kmsg.is_some()
    }

    /// The syscall seccomp refused to `pid`, if the kernel logged it.
    pub fn syscall_of(&mut self, pid: u32) -> Option<i64> {
        self.drain();
        self.seen.remove(&pid)
    }

    fn drain(&mut self) {
        let Some(kmsg) = &mut self.kmsg else { return };
        let mut buf = [0u8; 8192];
        loop {
            match kmsg.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some((pid, nr)) = parse(&String::from_utf8_lossy(&buf[..n])) {
                        if self.seen.len() >= MAX_PENDING {
                            self.seen.clear();
                        }
                        self.seen.insert(pid, nr);
                    }
                }
                // EPIPE: records were overwritten before we read them; keep going.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
}

/// Parses a seccomp audit record: `audit: type=1326 ... pid=<pid> ... syscall=<nr> ...`.
fn parse(record: &str) -> Option<(u32, i64)> {
    if !record.contains("type=1326") {
        return None;
    }
    let field = |name: &str| {
        record.split_whitespace().find_map(|w| w.strip_prefix(name)).and_then(|v| v.trim_end_matches(',').parse().ok())
    };
    Some((field("pid=")? as u32, field("syscall=")?))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_seccomp_records() {
        let r = "6,1234,2577513074,-;audit: type=1326 audit(1795618736.422:4): auid=4294967295 uid=65534 \
                 gid=65534 ses=4294967295 pid=20990 comm=\"exe\" exe=\"/x\" sig=31 arch=c000003e syscall=44 compat=0 \
                 ip=0x7f9da3a4cb59 code=0x80000000";
        assert_eq!(parse(r), Some((20990, 44)));
        assert_eq!(parse("6,1,2,-;some other line pid=1 syscall=2"), None);
    }
}
