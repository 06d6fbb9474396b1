//! Bidirectional copy between client and instance: half-close aware, idle-timed, buffers only while data is in flight.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

/// Size of one copy buffer.
const BUF_SIZE: usize = 64 * 1024;
/// Free buffers kept per worker thread for reuse.
const POOL_KEEP: usize = 64;

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
}

impl Half {
    fn new() -> Half {
        Half {
            buf: None,
            start: 0,
            end: 0,
            eof: false,
            finished: false,
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

impl Drop for Half {
    fn drop(&mut self) {
        self.release();
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
        let up_done = match up.poll(cx, &mut *client, &mut *server, sent, &mut moved, down.finished) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e.kind())),
            Poll::Pending => false,
        };
        let down_done = match down.poll(cx, &mut *server, &mut *client, received, &mut moved, up.finished) {
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
