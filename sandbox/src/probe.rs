//! Test probes: native code that acts like a guest that escaped Wasmtime, run in a fully hardened
//! sandbox instead of a guest. Only a fork server started with `test_probes` accepts them; the
//! tests use them to show each forbidden action fails or kills the process.

use std::ffi::CString;

use alga_shared::bindings::ExecuteResponse;
use alga_shared::channel::SandboxEnd;
use alga_shared::protocol::{ExecStats, HostCall, LogLevel, ProbeAction};

use crate::harden::IPC_FD;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Writes raw bytes on the IPC socket, the way the channel does (`sendto`).
fn send_raw(end: &SandboxEnd, bytes: &[u8]) -> i64 {
    // SAFETY: `bytes` is a valid buffer of the given length; no address.
    unsafe {
        libc::syscall(
            libc::SYS_sendto,
            end.raw_fd_number(),
            bytes.as_ptr(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0,
        )
    }
}

/// Blocks until the supervisor answers or kills us.
fn wait_for_supervisor(end: &SandboxEnd) {
    let mut buf = [0u8; 1];
    // SAFETY: reading into a valid one-byte buffer; no address.
    unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            end.raw_fd_number(),
            buf.as_mut_ptr(),
            1,
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
}

/// Runs `action`. When the attempt returns (instead of the process being killed), the result is
/// reported as a response body `returned <value> errno <n>`.
pub fn run(action: &ProbeAction, end: &mut SandboxEnd) -> i32 {
    let ret: i64 = match action {
        ProbeAction::Open { path } => {
            let c = CString::new(path.as_str()).unwrap_or_default();
            // SAFETY: a valid NUL-terminated path; the syscall only reads it.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c.as_ptr(), libc::O_RDONLY) }
        }
        ProbeAction::WriteFile { path, value } => {
            let c = CString::new(path.as_str()).unwrap_or_default();
            // SAFETY: a valid NUL-terminated path; the syscall only reads it.
            let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c.as_ptr(), libc::O_WRONLY) };
            if fd < 0 {
                fd
            } else {
                // SAFETY: `value` is a valid buffer of the given length.
                unsafe { libc::syscall(libc::SYS_pwrite64, fd, value.as_ptr(), value.len(), 0) }
            }
        }
        // SAFETY: plain syscall with integer arguments.
        ProbeAction::SocketInet => unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) },
        ProbeAction::ConnectLoopback { port } => {
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid sockaddr_in and its size.
            unsafe {
                libc::syscall(
                    libc::SYS_connect,
                    IPC_FD,
                    &addr as *const libc::sockaddr_in,
                    std::mem::size_of::<libc::sockaddr_in>(),
                )
            }
        }
        ProbeAction::Execve => {
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            // SAFETY: NUL-terminated path and null-terminated argv/envp arrays.
            unsafe { libc::syscall(libc::SYS_execve, path.as_ptr(), argv.as_ptr(), envp.as_ptr()) }
        }
        ProbeAction::Fork => {
            // SAFETY: raw fork; a child that appears exits at once without touching any state.
            let r = unsafe { libc::syscall(libc::SYS_fork) };
            if r == 0 {
                // SAFETY: exiting the child immediately.
                unsafe { libc::syscall(libc::SYS_exit_group, 0) };
            }
            r
        }
        // SAFETY: plain syscall with integer arguments.
        ProbeAction::Ptrace => unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) },
        ProbeAction::Mount => {
            let (src, dst, fs) = (c"none", c"/", c"tmpfs");
            // SAFETY: valid NUL-terminated strings; null data.
            unsafe { libc::syscall(libc::SYS_mount, src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, 0) }
        }
        // SAFETY: plain syscall with integer arguments.
        ProbeAction::Kill { pid } => unsafe { libc::syscall(libc::SYS_kill, *pid, libc::SIGKILL) },
        ProbeAction::RaiseRlimit => {
            // RLIMIT_NOFILE was lowered by hygiene; raising the hard limit needs CAP_SYS_RESOURCE.
            let lim = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
            // SAFETY: a valid rlimit.
            unsafe { libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_NOFILE, &lim as *const libc::rlimit) }
        }
        // SAFETY: plain syscall with integer arguments.
        ProbeAction::Unshare => unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) },
        ProbeAction::RawBytes { bytes } => {
            if send_raw(end, bytes) < 0 {
                return 1;
            }
            wait_for_supervisor(end);
            return 0;
        }
        ProbeAction::RawBytesThenExit { bytes } => {
            send_raw(end, bytes);
            return 0;
        }
        ProbeAction::WrongCallId => {
            let _ = end.send_call_unchecked(7, HostCall::ContextGet);
            wait_for_supervisor(end);
            return 0;
        }
        ProbeAction::FloodLogs { count } => {
            for i in 0..*count {
                if end.log(LogLevel::Info, format!("flood {i}")).is_err() {
                    return 0;
                }
            }
            0
        }
    };
    let body = format!("returned {ret} errno {}", if ret < 0 { errno() } else { 0 });
    let response = ExecuteResponse { status: 200, headers: vec![], body: Some(body.into_bytes()) };
    match end.done(response, ExecStats::default()) {
        Ok(()) => {
            end.wait_closed();
            0
        }
        Err(_) => 1,
    }
}
