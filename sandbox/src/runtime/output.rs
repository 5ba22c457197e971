//! `wasi:cli/stdout` and `stderr`, captured into one bounded buffer.
//!
//! Writes never fail: past the budget the bytes are dropped and the capture is marked truncated,
//! so a chatty guest neither traps nor grows the sandbox's memory.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Default)]
struct Buffers {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    budget: usize,
    truncated: bool,
}

/// The shared capture of both streams.
#[derive(Debug, Clone)]
pub struct Capture(Arc<Mutex<Buffers>>);

/// What the guest wrote.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Stdout,
    Stderr,
}

impl Capture {
    /// A capture keeping at most `budget` bytes of both streams together.
    pub fn new(budget: usize) -> Self {
        Capture(Arc::new(Mutex::new(Buffers { budget, ..Buffers::default() })))
    }

    pub fn stdout(&self) -> CaptureStream {
        CaptureStream { capture: self.clone(), which: Which::Stdout }
    }

    pub fn stderr(&self) -> CaptureStream {
        CaptureStream { capture: self.clone(), which: Which::Stderr }
    }

    /// Sets how many bytes of both streams together are kept; what is already kept counts
    /// against it (stdout first), and what no longer fits is dropped and marks the output truncated.
    pub fn set_budget(&self, budget: usize) {
        let mut b = self.lock();
        b.budget = budget;
        if b.stdout.len() + b.stderr.len() > budget {
            b.truncated = true;
            let stdout = b.stdout.len().min(budget);
            b.stdout.truncate(stdout);
            let stderr = budget - stdout;
            b.stderr.truncate(stderr);
        }
    }

    /// Takes what was captured so far.
    pub fn take(&self) -> Captured {
        let mut b = self.lock();
        Captured {
            stdout: std::mem::take(&mut b.stdout),
            stderr: std::mem::take(&mut b.stderr),
            truncated: b.truncated,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffers> {
        // A poisoned lock only means a panic elsewhere; the buffers are still plain bytes.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, which: Which, bytes: &[u8]) {
        let mut b = self.lock();
        let room = b.budget.saturating_sub(b.stdout.len() + b.stderr.len());
        let keep = bytes.len().min(room);
        if keep < bytes.len() {
            b.truncated = true;
        }
        match which {
            Which::Stdout => b.stdout.extend_from_slice(&bytes[..keep]),
            Which::Stderr => b.stderr.extend_from_slice(&bytes[..keep]),
        }
    }
}

/// One of the two captured streams.
#[derive(Debug, Clone)]
pub struct CaptureStream {
    capture: Capture,
    which: Which,
}

/// Largest write the guest is told it may issue at once.
const WRITE_PERMIT: usize = 64 * 1024;

#[wasmtime_wasi::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.append(self.which, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for CaptureStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.capture.append(self.which, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_streams_share_one_budget_and_excess_is_marked() {
        let cap = Capture::new(10);
        let (mut out, mut err) = (cap.stdout(), cap.stderr());
        out.write(Bytes::from_static(b"123456")).unwrap();
        err.write(Bytes::from_static(b"abcdef")).unwrap();
        out.write(Bytes::from_static(b"zzz")).unwrap();
        let got = cap.take();
        assert_eq!(got.stdout, b"123456");
        assert_eq!(got.stderr, b"abcd");
        assert!(got.truncated);
    }

    #[test]
    fn a_smaller_budget_counts_what_is_already_kept() {
        // Output of an instance made ahead, before its job's budget was known.
        let cap = Capture::new(100);
        let (mut out, mut err) = (cap.stdout(), cap.stderr());
        out.write(Bytes::from_static(b"123456")).unwrap();
        err.write(Bytes::from_static(b"abcdef")).unwrap();
        cap.set_budget(8);
        out.write(Bytes::from_static(b"more")).unwrap();
        let got = cap.take();
        assert_eq!((got.stdout.as_slice(), got.stderr.as_slice(), got.truncated), (&b"123456"[..], &b"ab"[..], true));
        // A larger budget keeps everything.
        let cap = Capture::new(100);
        cap.stdout().write(Bytes::from_static(b"123456")).unwrap();
        cap.set_budget(50);
        assert!(!cap.take().truncated);
    }
}
