//! Framed channels over Unix stream sockets, able to carry file descriptors (`SCM_RIGHTS`), and
//! the role-specific wrappers built on them: one named method per protocol step, so neither side
//! can send a message its role does not own.
//!
//! | wrapper | who holds it | talks to |
//! |---|---|---|
//! | [`SandboxEnd`] | a sandbox (blocking) | its supervisor |
//! | [`SupervisorEnd`] | the supervisor (async) | one sandbox |
//! | [`ForkServerEnd`] | the fork server (blocking) | the supervisor |
//! | [`ForkClientEnd`] | the supervisor (async) | the fork server |

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use interprocess::os::unix::uds_local_socket::Stream as LocalStream;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::bindings::ExecuteResponse;
use crate::frame::{self, FrameError};
use crate::protocol::*;

/// Most descriptors accepted with one message (a sandbox socket and three cgroup files).
const MAX_FDS: usize = 8;

/// Sends `frame` on a socket, attaching `fds` to its first byte. Returns the bytes sent so far
/// (at least one); the caller writes the rest as plain data.
fn send_first_with_fds(sock: RawFd, frame: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    loop {
        match sendmsg::<()>(sock, &[IoSlice::new(frame)], &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// One `recvmsg` into `buf`, collecting any descriptors that came with the bytes.
fn recv_some_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let n = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for r in raw {
                // SAFETY: the kernel just installed `r` in our table for this message (with
                // CLOEXEC); nothing else owns it, so wrapping it transfers sole ownership.
                fds.push(unsafe { OwnedFd::from_raw_fd(r) });
            }
        }
    }
    if truncated {
        return Err(io::Error::other("more descriptors than expected arrived with a message"));
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Blocking channel
// ---------------------------------------------------------------------------------------------

/// A blocking framed channel (interprocess local socket).
#[derive(Debug)]
pub struct BlockingChannel {
    stream: LocalStream,
    max_frame: u32,
}

impl BlockingChannel {
    pub fn new(fd: OwnedFd, max_frame: u32) -> Self {
        BlockingChannel { stream: LocalStream::from(fd), max_frame }
    }

    pub fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), FrameError> {
        let frame = frame::encode(msg, self.max_frame)?;
        (&self.stream).write_all(&frame)?;
        Ok(())
    }

    pub fn send_with_fd<M: Serialize>(&mut self, msg: &M, fd: BorrowedFd<'_>) -> Result<(), FrameError> {
        let frame = frame::encode(msg, self.max_frame)?;
        let sent = send_first_with_fds(self.stream.as_fd().as_raw_fd(), &frame, &[fd])?;
        (&self.stream).write_all(&frame[sent..])?;
        Ok(())
    }

    /// Receives one message; descriptors are not expected (any that arrive are closed and
    /// reported as [`FrameError::UnexpectedFds`]).
    pub fn recv<M: DeserializeOwned>(&mut self) -> Result<M, FrameError> {
        let (msg, fds) = self.recv_with_fds()?;
        if !fds.is_empty() {
            return Err(FrameError::UnexpectedFds);
        }
        Ok(msg)
    }

    /// Receives one message and the descriptors attached to it.
    pub fn recv_with_fds<M: DeserializeOwned>(&mut self) -> Result<(M, Vec<OwnedFd>), FrameError> {
        let mut header = [0u8; 4];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < header.len() {
            let n = recv_some_with_fds(self.stream.as_fd().as_raw_fd(), &mut header[got..], &mut fds)?;
            if n == 0 {
                return Err(if got == 0 { FrameError::Closed } else { FrameError::Truncated { got, want: 4 } });
            }
            got += n;
        }
        let body = frame::read_body(&mut &self.stream, header, self.max_frame)?;
        Ok((frame::decode(&body)?, fds))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Read for &BlockingChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }
}

// ---------------------------------------------------------------------------------------------
// Async channel
// ---------------------------------------------------------------------------------------------

/// An async framed channel. Methods take `&self`: sends are serialised with each other, and so
/// are receives, so one task may read while others write.
#[derive(Debug)]
pub struct AsyncChannel {
    stream: UnixStream,
    max_frame: u32,
    send_lock: Mutex<()>,
    recv_lock: Mutex<()>,
}

impl AsyncChannel {
    /// Wraps one end of a socket pair. Must be called inside a Tokio runtime.
    pub fn new(fd: OwnedFd, max_frame: u32) -> io::Result<Self> {
        let std = std::os::unix::net::UnixStream::from(fd);
        std.set_nonblocking(true)?;
        Ok(AsyncChannel {
            stream: UnixStream::from_std(std)?,
            max_frame,
            send_lock: Mutex::new(()),
            recv_lock: Mutex::new(()),
        })
    }

    /// Sends one message; returns the frame's length in bytes.
    pub async fn send<M: Serialize>(&self, msg: &M) -> Result<usize, FrameError> {
        let frame = frame::encode(msg, self.max_frame)?;
        let _guard = self.send_lock.lock().await;
        self.write_all(&frame).await?;
        Ok(frame.len())
    }

    pub async fn send_with_fd<M: Serialize>(&self, msg: &M, fd: BorrowedFd<'_>) -> Result<(), FrameError> {
        self.send_with_fds(msg, &[fd]).await
    }

    pub async fn send_with_fds<M: Serialize>(&self, msg: &M, fds: &[BorrowedFd<'_>]) -> Result<(), FrameError> {
        let frame = frame::encode(msg, self.max_frame)?;
        let _guard = self.send_lock.lock().await;
        let raw = self.stream.as_raw_fd();
        let sent = self.stream.async_io(Interest::WRITABLE, || send_first_with_fds(raw, &frame, fds)).await?;
        self.write_all(&frame[sent..]).await
    }

    async fn write_all(&self, mut buf: &[u8]) -> Result<(), FrameError> {
        while !buf.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(buf) {
                Ok(0) => return Err(FrameError::Closed),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(FrameError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn read_exact(&self, buf: &mut [u8]) -> Result<usize, FrameError> {
        let mut got = 0;
        while got < buf.len() {
            self.stream.readable().await?;
            match self.stream.try_read(&mut buf[got..]) {
                Ok(0) => return Ok(got),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(got)
    }

    /// Half-closes the socket: the peer reads end-of-file.
    pub fn close_write(&self) {
        let _ = nix::sys::socket::shutdown(self.stream.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    }

    /// Receives one message; descriptors are not accepted. Plain reads make the kernel discard
    /// (close) any descriptor a hostile peer attaches, so none ever reaches our table.
    pub async fn recv<M: DeserializeOwned>(&self) -> Result<M, FrameError> {
        Ok(self.recv_sized().await?.0)
    }

    /// Like [`Self::recv`], also returning the frame's length in bytes.
    pub async fn recv_sized<M: DeserializeOwned>(&self) -> Result<(M, usize), FrameError> {
        let _guard = self.recv_lock.lock().await;
        let mut header = [0u8; 4];
        match self.read_exact(&mut header).await? {
            0 => return Err(FrameError::Closed),
            4 => {}
            got => return Err(FrameError::Truncated { got, want: 4 }),
        }
        let len = frame::check_len(header, self.max_frame)?;
        let mut body = vec![0; len];
        let got = self.read_exact(&mut body).await?;
        if got < len {
            return Err(FrameError::Truncated { got, want: len });
        }
        Ok((frame::decode(&body)?, len))
    }

    /// Receives one message and the descriptors attached to it.
    pub async fn recv_with_fds<M: DeserializeOwned>(&self) -> Result<(M, Vec<OwnedFd>), FrameError> {
        let _guard = self.recv_lock.lock().await;
        let raw = self.stream.as_raw_fd();
        let mut header = [0u8; 4];
        let mut got = 0;
        let mut fds = Vec::new();
        while got < header.len() {
            let n = self
                .stream
                .async_io(Interest::READABLE, || recv_some_with_fds(raw, &mut header[got..], &mut fds))
                .await?;
            if n == 0 {
                return Err(if got == 0 { FrameError::Closed } else { FrameError::Truncated { got, want: 4 } });
            }
            got += n;
        }
        let len = frame::check_len(header, self.max_frame)?;
        let mut body = vec![0; len];
        let got = self.read_exact(&mut body).await?;
        if got < len {
            return Err(FrameError::Truncated { got, want: len });
        }
        Ok((frame::decode(&body)?, fds))
    }
}

// ---------------------------------------------------------------------------------------------
// Sandbox <-> supervisor
// ---------------------------------------------------------------------------------------------

/// A job as the sandbox receives it, with the descriptor that came with it.
#[derive(Debug)]
pub enum Job {
    /// Run `handler`; the descriptor is the sealed memfd of the compiled artifact (none for a
    /// sandbox that preloaded it).
    Execute(Box<ExecuteJob>, Option<OwnedFd>),
    /// Compile; the descriptor is a sealed memfd holding the component.
    Compile(CompileJob, OwnedFd),
    /// Test only: act like an escaped guest.
    Probe(ProbeAction),
}

/// Why a sandbox's call to its supervisor failed. Any of these ends the execution.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("supervisor answered call {got} while call {want} was pending")]
    WrongCallId { got: u32, want: u32 },
    #[error("supervisor sent an unexpected message while a host call was pending")]
    Unexpected,
}

/// The sandbox's end of its IPC socket.
#[derive(Debug)]
pub struct SandboxEnd {
    chan: BlockingChannel,
    next_call: u32,
}

impl SandboxEnd {
    pub fn new(fd: OwnedFd, max_frame: u32) -> Self {
        SandboxEnd { chan: BlockingChannel::new(fd, max_frame), next_call: 0 }
    }

    pub fn ready(&mut self, layers: HardeningReport) -> Result<(), FrameError> {
        self.chan.send(&SandboxMsg::Ready { layers })
    }

    /// Blocks until the one job of this sandbox arrives.
    pub fn recv_job(&mut self) -> Result<Job, FrameError> {
        let (msg, mut fds) = self.chan.recv_with_fds::<SupervisorMsg>()?;
        if fds.len() > 1 {
            return Err(FrameError::UnexpectedFds);
        }
        let fd = fds.pop().ok_or(FrameError::MissingFd);
        match msg {
            SupervisorMsg::Execute(job) => Ok(Job::Execute(Box::new(job), fd.ok())),
            SupervisorMsg::Compile(job) => Ok(Job::Compile(job, fd?)),
            SupervisorMsg::Probe(action) => Ok(Job::Probe(action)),
            SupervisorMsg::HostReply { .. } => Err(FrameError::Malformed("host reply before any job".into())),
        }
    }

    /// One blocking host-call round trip.
    pub fn call(&mut self, call: HostCall) -> Result<HostReply, CallError> {
        let call_id = self.next_call;
        self.next_call = self.next_call.wrapping_add(1);
        self.chan.send(&host_call(call_id, &call)?)?;
        match self.chan.recv::<SupervisorMsg>()? {
            SupervisorMsg::HostReply { call_id: got, reply } if got == call_id => Ok(reply),
            SupervisorMsg::HostReply { call_id: got, .. } => Err(CallError::WrongCallId { got, want: call_id }),
            _ => Err(CallError::Unexpected),
        }
    }

    pub fn log(&mut self, level: LogLevel, message: String) -> Result<(), FrameError> {
        self.chan.send(&SandboxMsg::Log { level, message })
    }

    /// The raw socket's number, for test probes that write malformed frames on purpose.
    pub fn raw_fd_number(&self) -> RawFd {
        self.chan.as_fd().as_raw_fd()
    }

    /// Sends a host call without waiting for its answer (test probes only).
    pub fn send_call_unchecked(&mut self, call_id: u32, call: HostCall) -> Result<(), FrameError> {
        self.chan.send(&host_call(call_id, &call)?)
    }

    pub fn done(&mut self, response: ExecuteResponse, stats: ExecStats) -> Result<(), FrameError> {
        self.chan.send(&SandboxMsg::Done { response, stats })
    }

    pub fn failed(&mut self, failure: Failure, stats: ExecStats) -> Result<(), FrameError> {
        self.chan.send(&SandboxMsg::Failed { failure, stats })
    }

    /// Blocks until the supervisor closes the channel (it does once it has the result). Exiting
    /// only then keeps the process's teardown off the supervisor's path to the result: a sandbox
    /// that exits at once competes for the CPU the supervisor was just woken on.
    pub fn wait_closed(&mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.chan).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// Reports a successful compilation and streams the artifact in chunks.
    pub fn compiled(&mut self, info: ComponentInfo, artifact: &[u8]) -> Result<(), FrameError> {
        self.chan.send(&SandboxMsg::Compiled { artifact_len: artifact.len() as u64, info })?;
        for chunk in artifact.chunks(ARTIFACT_CHUNK_BYTES) {
            self.chan.send(&SandboxMsg::ArtifactChunk { bytes: chunk.to_vec() })?;
        }
        Ok(())
    }
}

/// The supervisor's end of one sandbox's IPC socket.
#[derive(Debug)]
pub struct SupervisorEnd {
    chan: AsyncChannel,
}

impl SupervisorEnd {
    pub fn new(fd: OwnedFd, max_frame: u32) -> io::Result<Self> {
        Ok(SupervisorEnd { chan: AsyncChannel::new(fd, max_frame)? })
    }

    /// The next message from the sandbox (hostile input: validate before use) and its size.
    pub async fn recv(&self) -> Result<(SandboxMsg, usize), FrameError> {
        self.chan.recv_sized().await
    }

    /// Sends the job, with the artifact's memfd unless the sandbox preloaded it.
    pub async fn execute(&self, job: ExecuteJob, artifact: Option<BorrowedFd<'_>>) -> Result<(), FrameError> {
        match artifact {
            Some(fd) => self.chan.send_with_fd(&SupervisorMsg::Execute(job), fd).await,
            None => self.chan.send(&SupervisorMsg::Execute(job)).await.map(|_| ()),
        }
    }

    pub async fn compile(&self, job: CompileJob, wasm: BorrowedFd<'_>) -> Result<(), FrameError> {
        self.chan.send_with_fd(&SupervisorMsg::Compile(job), wasm).await
    }

    /// Answers host call `call_id`; returns the frame's size in bytes.
    /// Tells the sandbox it may exit: no more messages will come (half-closes the socket).
    pub fn close(&self) {
        self.chan.close_write();
    }

    /// Test only: a probe job (the sandbox refuses it unless started with `test_probes`).
    pub async fn probe(&self, action: ProbeAction) -> Result<(), FrameError> {
        self.chan.send(&SupervisorMsg::Probe(action)).await.map(|_| ())
    }

    pub async fn reply(&self, call_id: u32, reply: HostReply) -> Result<usize, FrameError> {
        self.chan.send(&SupervisorMsg::HostReply { call_id, reply }).await
    }
}

// ---------------------------------------------------------------------------------------------
// Fork server <-> supervisor
// ---------------------------------------------------------------------------------------------

/// The fork server's end of its control socket.
#[derive(Debug)]
pub struct ForkServerEnd {
    chan: BlockingChannel,
}

impl ForkServerEnd {
    pub fn new(fd: OwnedFd, max_frame: u32) -> Self {
        ForkServerEnd { chan: BlockingChannel::new(fd, max_frame) }
    }

    /// The socket, for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.chan.as_fd()
    }

    /// The next request and the descriptors that came with it (for `Spawn`: the sandbox's
    /// socket, then its cgroup's `cgroup.procs` files, opened for writing).
    pub fn recv_request(&mut self) -> Result<(ForkRequest, Vec<OwnedFd>), FrameError> {
        self.chan.recv_with_fds::<ForkRequest>()
    }

    pub fn started(&mut self, engine_fingerprint: String, namespaces: NamespaceSet) -> Result<(), FrameError> {
        self.chan.send(&ForkEvent::Started { engine_fingerprint, namespaces, pid: std::process::id() })
    }

    pub fn spawned(&mut self, token: u64, pid: u32, pidfd: BorrowedFd<'_>) -> Result<(), FrameError> {
        self.chan.send_with_fd(&ForkEvent::Spawned { token, pid }, pidfd)
    }

    pub fn spawn_failed(&mut self, token: u64, error: String) -> Result<(), FrameError> {
        self.chan.send(&ForkEvent::SpawnFailed { token, error })
    }

    pub fn exited(&mut self, pid: u32, status: ExitStatus) -> Result<(), FrameError> {
        self.chan.send(&ForkEvent::Exited { pid, status })
    }
}

/// The supervisor's end of the fork server's control socket.
#[derive(Debug)]
pub struct ForkClientEnd {
    chan: AsyncChannel,
}

impl ForkClientEnd {
    pub fn new(fd: OwnedFd, max_frame: u32) -> io::Result<Self> {
        Ok(ForkClientEnd { chan: AsyncChannel::new(fd, max_frame)? })
    }

    /// The first message: how to harden sandboxes.
    pub async fn start(&self, plan: SandboxPlan) -> Result<(), FrameError> {
        self.chan.send(&ForkRequest::Start { plan }).await.map(|_| ())
    }

    /// Asks for a sandbox; `cgroup_procs` are the slot's `cgroup.procs` files, open for writing
    /// (the fork server needs no filesystem), `cgroups` their directories (for the report).
    pub async fn spawn(
        &self,
        token: u64,
        mode: SandboxMode,
        cgroups: Vec<String>,
        sandbox_socket: BorrowedFd<'_>,
        preload: Option<BorrowedFd<'_>>,
        cgroup_procs: &[BorrowedFd<'_>],
    ) -> Result<(), FrameError> {
        let mut fds = vec![sandbox_socket];
        fds.extend(preload);
        fds.extend_from_slice(cgroup_procs);
        let request = ForkRequest::Spawn { token, mode, cgroups, preload: preload.is_some() };
        self.chan.send_with_fds(&request, &fds).await
    }

    /// The next event, with the pidfd that comes with `Spawned`.
    pub async fn recv(&self) -> Result<(ForkEvent, Option<OwnedFd>), FrameError> {
        let (event, mut fds) = self.chan.recv_with_fds::<ForkEvent>().await?;
        if fds.len() > 1 {
            return Err(FrameError::UnexpectedFds);
        }
        Ok((event, fds.pop()))
    }
}

/// Microseconds since `start`, saturating.
pub fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A host call as the sandbox sends it: its kind, and its arguments encoded apart.
fn host_call(call_id: u32, call: &HostCall) -> Result<SandboxMsg, FrameError> {
    Ok(SandboxMsg::HostCall { call_id, kind: call.kind(), args: frame::encode_value(call)? })
}
