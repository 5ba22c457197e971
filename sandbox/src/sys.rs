//! Thin wrappers over system calls that neither `nix` nor `std` offer in the form the sandbox
//! needs. Every `unsafe` block of the crate's process handling lives here and says why it is
//! sound; callers get safe functions.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// 32 bytes from the kernel's CSPRNG (`getrandom(2)`), read in the calling process.
pub fn random_seed() -> [u8; 32] {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which we own
        // mutably; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // getrandom cannot fail on a kernel that has it (>= 3.17) once the pool is
            // initialised; a seed that is not random must never be used.
            panic!("getrandom failed: {}", io::Error::last_os_error());
        }
    }
    buf
}

/// Result of [`clone_process`].
pub enum Cloned {
    /// We are the new process.
    Child,
    /// We are the parent; the child has this pid and pidfd.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// Creates a child process like `fork()` (same stack, copy-on-write memory) but with `flags`
/// (`CLONE_NEW*` namespaces) and a pidfd for it.
///
/// Only call this from a single-threaded process: the child gets a copy of this thread only,
/// and glibc's `fork` handlers do not run (the fork server never holds a lock here).
pub fn clone_process(ns_flags: libc::c_int) -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let flags = (ns_flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: raw clone(2) with a null stack pointer behaves like fork(): the child continues on
    // a copy-on-write copy of this (only) thread's stack. CLONE_PIDFD makes the kernel store the
    // pidfd in `pidfd`, which lives on this stack until the call returns. No CLONE_VM, so no
    // memory is shared. x86_64 and aarch64 argument order: flags, stack, parent_tid, child_tid, tls.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    match check(ret)? {
        0 => Ok(Cloned::Child),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel installed a new descriptor in `pidfd` for us.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Cloned::Parent { pid: pid as libc::pid_t, pidfd })
        }
    }
}

/// Sends `signal` to the process behind `pidfd` (race-free: the pid cannot be reused).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we borrow; null siginfo means "as kill(2)".
    check(unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null_mut::<libc::c_void>(), 0)
    })?;
    Ok(())
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range only closes descriptors; callers make sure no `OwnedFd` they still use
    // is at or above `first`.
    check(unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, 0) })?;
    Ok(())
}

/// Closes one raw descriptor that no Rust object owns (an inherited standard stream).
pub fn close_raw(fd: RawFd) {
    // SAFETY: used only on descriptors 0..=2 inherited from the fork server, which no Rust
    // object in the sandbox owns.
    unsafe { libc::close(fd) };
}

/// Moves `fd` to the lowest free descriptor number at or above `min`.
pub fn move_fd_above(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own onto a free number; nothing else
    // owns the new one.
    let new = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) } as libc::c_long)?;
    drop(fd);
    // SAFETY: fcntl succeeded, so `new` is an open descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(new as RawFd) })
}

/// Moves `fd` to exactly `target` (closing whatever was there) and returns the new owner.
pub fn move_fd(fd: OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() == target {
        return Ok(fd);
    }
    // SAFETY: dup3 duplicates a descriptor we own onto `target`; callers pass a target no Rust
    // object owns (it is closed by dup3 if open). O_CLOEXEC is irrelevant: the sandbox never execs.
    check(unsafe { libc::dup3(fd.as_raw_fd(), target, libc::O_CLOEXEC) } as libc::c_long)?;
    drop(fd);
    // SAFETY: dup3 succeeded, so `target` is now a descriptor that only we own.
    Ok(unsafe { OwnedFd::from_raw_fd(target) })
}

/// Sets the soft and hard value of a resource limit.
pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: libc::rlim_t) -> io::Result<()> {
    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: `lim` is a valid rlimit for the duration of the call.
    check(unsafe { libc::setrlimit(resource, &lim) } as libc::c_long)?;
    Ok(())
}

/// `prctl` with integer arguments.
pub fn prctl(option: libc::c_int, arg2: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: every prctl option used by the sandbox takes integer arguments only.
    let ret = unsafe { libc::prctl(option, arg2, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    Ok(check(ret as libc::c_long)? as libc::c_int)
}

const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Clears the effective, permitted and inheritable capability sets of this thread.
pub fn clear_capabilities() -> io::Result<()> {
    let header = CapHeader { version: CAP_V3, pid: 0 };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs (version 3 layout) from valid memory.
    check(unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) })?;
    Ok(())
}

/// True when the effective, permitted and inheritable sets of this thread are all empty.
pub fn capabilities_empty() -> io::Result<bool> {
    let header = CapHeader { version: CAP_V3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data structs (version 3 layout) into memory we own.
    check(unsafe { libc::syscall(libc::SYS_capget, &header as *const CapHeader, data.as_mut_ptr()) })?;
    Ok(data.iter().all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0))
}

/// `pivot_root(2)` with both arguments "." (the new root stacks over the old one).
pub fn pivot_root_here() -> io::Result<()> {
    let dot = c".";
    // SAFETY: two valid NUL-terminated paths.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) })?;
    Ok(())
}

/// Arms (or with 0, disarms) the one-shot `ITIMER_REAL` timer that raises SIGALRM.
pub fn arm_alarm(after: std::time::Duration) -> io::Result<()> {
    let value = libc::itimerval {
        it_interval: libc::timeval { tv_sec: 0, tv_usec: 0 },
        it_value: libc::timeval {
            tv_sec: after.as_secs() as libc::time_t,
            tv_usec: after.subsec_micros() as libc::suseconds_t,
        },
    };
    // SAFETY: valid itimerval; the old value is not requested.
    check(unsafe { libc::setitimer(libc::ITIMER_REAL, &value, std::ptr::null_mut()) } as libc::c_long)?;
    Ok(())
}

/// Installs `handler` for `signal` with SA_RESTART (interrupted syscalls resume).
pub fn install_signal_handler(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) -> io::Result<()> {
    // SAFETY: zeroed sigaction is a valid "no flags, empty mask" value; we then set the handler,
    // which is an `extern "C" fn(c_int)` as the kernel expects without SA_SIGINFO.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        check(libc::sigaction(signal, &action, std::ptr::null_mut()) as libc::c_long)?;
    }
    Ok(())
}

/// Whether the other end of a connected socket has gone (closed or shut down), without waiting.
pub fn peer_closed(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout; poll only writes `revents`.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Exits the process immediately, without running destructors or `atexit` handlers (which
/// belong to the fork server's state the sandbox inherited).
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the running system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Changes the protection of `len` bytes at `ptr` (both page-aligned).
pub fn protect(ptr: *const u8, len: usize, prot: libc::c_int) -> io::Result<()> {
    // SAFETY: callers (Wasmtime's code-memory hooks) pass a page-aligned range of a mapping they
    // own; changing its protection does not invalidate any Rust reference into it (code memory
    // is only executed or read through raw pointers).
    check(unsafe { libc::mprotect(ptr.cast_mut().cast(), len, prot) } as libc::c_long)?;
    Ok(())
}

/// A read-only private mapping of the first `len` bytes of `fd`.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing `&[u8]` views across
// threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh read-only private mapping chosen by the kernel; the descriptor is valid
        // for the call. Later writes to the file cannot happen (the memfd is sealed), so the view
        // is stable.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// The mapping as a raw region, for Wasmtime to run code from in place.
    pub fn raw(&self) -> std::ptr::NonNull<[u8]> {
        let ptr = std::ptr::NonNull::new(self.ptr.cast::<u8>()).unwrap_or(std::ptr::NonNull::dangling());
        std::ptr::NonNull::slice_from_raw_parts(ptr, self.len)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region this value mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
