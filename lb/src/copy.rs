//! Bidirectional copy between client and instance: half-close aware, idle-timed, buffers (or pipes) only while data is in flight.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

#[cfg(target_os = "linux")]
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

#[cfg(target_os = "linux")]
use crate::splice::Pipe;

/// Size of one copy buffer.
const BUF_SIZE: usize = 64 * 1024;
/// Free buffers kept per worker thread for reuse.
const POOL_KEEP: usize = 64;
/// A direction that has carried this much is a bulk flow and switches to
/// splice(2) (Linux): small request/response traffic stays on the cheaper
/// read/write path, large transfers skip the copy through user space.
const SPLICE_AFTER: u64 = 256 * 1024;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// Takes a buffer from this thread's free list, or allocates one.
fn take_buf() -> Box<[u8]> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < POOL_KEEP {
            f.push(buf);
        }
    });
}

/// How a proxied connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Both directions reached end of stream and were shut down in turn.
    Closed,
    /// Nothing moved either way for the idle timeout.
    IdleTimeout,
    /// A read or write failed (e.g. a reset); the other side is closed too.
    Error(io::ErrorKind),
}

/// One direction of the copy. It holds a buffer only while bytes read from
/// `from` wait to be written to `to`, so an idle connection costs no buffer.
struct Half {
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    eof: bool,
    finished: bool,
    /// Bytes read so far: a direction that passes [`SPLICE_AFTER`] is a bulk flow.
    total: u64,
    /// Bulk flows move through a pipe with splice(2), never through user space.
    #[cfg(target_os = "linux")]
    pipe: Option<Pipe>,
    /// Bytes sitting in `pipe`, read but not yet written.
    in_pipe: usize,
    /// False once splice failed as unsupported for this pair of sockets.
    splice_ok: bool,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: None,
            start: 0,
            end: 0,
            eof: false,
            finished: false,
            total: 0,
            #[cfg(target_os = "linux")]
            pipe: None,
            in_pipe: 0,
            splice_ok: cfg!(target_os = "linux"),
        }
    }

    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
        self.start = 0;
        self.end = 0;
    }

    /// Moves bytes until `from` would block, then registers for wake-up.
    /// Returns Ready(Ok) once `from` ended and `to` was shut down for writing.
    ///
    /// Reads and writes go through tokio's `AsyncRead`/`AsyncWrite`, which
    /// treat a short read or write as "drained" on edge-triggered epoll: the
    /// next poll waits for an event instead of paying a syscall for EAGAIN.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
        counter: &IntCounter,
        moved: &mut bool,
        other_finished: bool,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.finished {
                return Poll::Ready(Ok(()));
            }
            #[cfg(target_os = "linux")]
            if self.in_pipe > 0 {
                ready!(self.poll_drain_pipe(cx, to, counter, moved))?;
                continue;
            }
            if self.start < self.end {
                let Some(buf) = self.buf.as_deref() else {
                    self.start = 0;
                    self.end = 0;
                    continue;
                };
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[self.start..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                counter.inc_by(n as u64);
                *moved = true;
                if self.start == self.end {
                    self.release();
                }
                continue;
            }
            if self.eof {
                if other_finished {
                    // Both directions are done: closing the sockets sends the
                    // FIN, so a shutdown(2) here would be a wasted syscall.
                    self.finished = true;
                    continue;
                }
                // Half-close: pass the end of stream on and keep the other
                // direction running. ENOTCONN means the peer is gone already.
                match ready!(Pin::new(&mut *to).poll_shutdown(cx)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                self.finished = true;
                continue;
            }
            // Wait for readiness before taking a buffer, so that an idle
            // connection never holds one.
            ready!(from.poll_read_ready(cx))?;
            #[cfg(target_os = "linux")]
            if self.splice_ok && self.total >= SPLICE_AFTER {
                self.fill_pipe(from, moved)?;
                continue;
            }
            let buf = self.buf.get_or_insert_with(take_buf);
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut *from).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    self.release();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    *moved = true;
                    if n == 0 {
                        self.eof = true;
                        self.release();
                    } else {
                        self.end = n;
                        self.total += n as u64;
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.release();
                    return Poll::Ready(Err(e));
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
impl Half {
    /// One splice from `from` into a pipe (taken from the thread's free list).
    /// A would-block puts the pipe back, so an idle connection holds none.
    fn fill_pipe(&mut self, from: &TcpStream, moved: &mut bool) -> io::Result<()> {
        let pipe = match self.pipe.take() {
            Some(p) => p,
            None => match Pipe::take() {
                Ok(p) => p,
                Err(e) => {
                    // Out of descriptors for pipes: copy through user space instead.
                    tracing::debug!(error = %e, "no pipe for splice; copying instead");
                    self.splice_ok = false;
                    return Ok(());
                }
            },
        };
        let fd = from.as_raw_fd();
        match from.try_io(Interest::READABLE, || pipe.fill_from(fd, pipe.capacity())) {
            Ok(0) => {
                self.eof = true;
                *moved = true;
                pipe.give();
            }
            Ok(n) => {
                self.in_pipe = n;
                self.total += n as u64;
                *moved = true;
                self.pipe = Some(pipe);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give(),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                pipe.give();
                self.splice_ok = false;
            }
            Err(e) => {
                pipe.give();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes what sits in the pipe to `to`; Ready once the pipe is empty.
    fn poll_drain_pipe(
        &mut self,
        cx: &mut Context<'_>,
        to: &TcpStream,
        counter: &IntCounter,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        while self.in_pipe > 0 {
            ready!(to.poll_write_ready(cx))?;
            let Some(pipe) = self.pipe.as_ref() else {
                self.in_pipe = 0;
                break;
            };
            let fd = to.as_raw_fd();
            let len = self.in_pipe;
            match to.try_io(Interest::WRITABLE, || pipe.drain_to(fd, len)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.in_pipe -= n;
                    counter.inc_by(n as u64);
                    *moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if let Some(p) = self.pipe.take() {
            p.give();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Half {
    fn drop(&mut self) {
        self.release();
        // A pipe still holding bytes is closed, not reused.
        #[cfg(target_os = "linux")]
        if let Some(p) = self.pipe.take() {
            if self.in_pipe == 0 {
                p.give();
            }
        }
    }
}

/// Copies both ways until both directions have ended, one fails, or nothing
/// has moved for `idle`. Bytes are added to the counters as they are written.
pub async fn bidirectional(
    client: &mut TcpStream,
    server: &mut TcpStream,
    idle: Duration,
    sent: &IntCounter,
    received: &IntCounter,
) -> End {
    let mut up = Half::new();
    let mut down = Half::new();
    // The timer is re-armed only when it fires, from the last activity time,
    // rather than reset on every read.
    let mut last_activity = Instant::now();
    let timer = sleep_until(last_activity + idle);
    tokio::pin!(timer);
    poll_fn(|cx| {
        let mut moved = false;
        let up_done = match up.poll(
            cx,
            &mut *client,
            &mut *server,
            sent,
            &mut moved,
            down.finished,
        ) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e.kind())),
            Poll::Pending => false,
        };
        let down_done = match down.poll(
            cx,
            &mut *server,
            &mut *client,
            received,
            &mut moved,
            up.finished,
        ) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e.kind())),
            Poll::Pending => false,
        };
        if up_done && down_done {
            return Poll::Ready(End::Closed);
        }
        if moved {
            last_activity = Instant::now();
        }
        loop {
            match Pin::as_mut(&mut timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let deadline = last_activity + idle;
                    if Instant::now() >= deadline {
                        return Poll::Ready(End::IdleTimeout);
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    })
    .await
}
