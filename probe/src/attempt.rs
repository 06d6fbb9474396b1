//! One probe attempt of each kind, reading at most [`MAX_RESPONSE_BYTES`] of any answer.
//!
//! The attempt's deadline is applied by the caller (the runner): everything here may be
//! cancelled at any await point, which drops, and so closes, the connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::spec::ProbeKind;
use crate::{agent, tls, Outcome, Target, MAX_RESPONSE_BYTES};

const USER_AGENT_VALUE: &str = concat!("rota-probe/", env!("CARGO_PKG_VERSION"));

/// What one attempt found: the outcome and the human reason (also set on success).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub outcome: Outcome,
    pub reason: String,
}

impl Attempt {
    pub fn success(reason: impl Into<String>) -> Attempt {
        Attempt {
            outcome: Outcome::Success,
            reason: reason.into(),
        }
    }

    pub fn refused(reason: impl Into<String>) -> Attempt {
        let reason = reason.into();
        Attempt {
            outcome: Outcome::Refused(reason.clone()),
            reason,
        }
    }

    pub fn failed(reason: impl Into<String>) -> Attempt {
        let reason = reason.into();
        Attempt {
            outcome: Outcome::Failed(reason.clone()),
            reason,
        }
    }

    fn from_pair((outcome, reason): (Outcome, String)) -> Attempt {
        Attempt { outcome, reason }
    }
}

/// Probes `target` once, without a deadline of its own.
pub(crate) async fn probe(target: &Target) -> Attempt {
    match run(target).await {
        Ok(a) | Err(a) => a,
    }
}

async fn run(target: &Target) -> Result<Attempt, Attempt> {
    let addr = target.addr;
    match target.spec.kind() {
        ProbeKind::Tcp => {
            // Accepted is all a tcp probe asks; dropping the stream closes it at once.
            let _stream = connect(addr).await?;
            Ok(Attempt::success("connected"))
        }
        ProbeKind::Http { path } => {
            let stream = connect(addr).await?;
            let answer = exchange(stream, &addr.to_string(), path, false).await?;
            Ok(judge_status(answer.status))
        }
        ProbeKind::Https {
            path,
            tls: config,
            server_name,
        } => {
            let stream = connect(addr).await?;
            let (name, host) = match server_name {
                Some(name) => {
                    let host = match addr.port() {
                        443 => name.to_str().into_owned(),
                        port => format!("{}:{port}", name.to_str()),
                    };
                    (name.clone(), host)
                }
                None => (ServerName::IpAddress(addr.ip().into()), addr.to_string()),
            };
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(handshake_error)?;
            let answer = exchange(stream, &host, path, false).await?;
            Ok(judge_status(answer.status))
        }
        ProbeKind::GuestAgent => {
            let stream = connect(addr).await?;
            let answer = exchange(stream, &addr.to_string(), agent::STATUS_PATH, true).await?;
            Ok(Attempt::from_pair(agent::judge(
                answer.status,
                &answer.body,
            )))
        }
    }
}

fn judge_status(status: u16) -> Attempt {
    let reason = format!("http {status}");
    if status == 200 {
        Attempt::success(reason)
    } else {
        Attempt::refused(reason)
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, Attempt> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_failure(&e).unwrap_or_else(|| Attempt::failed(format!("connect: {e}"))))?;
    // Requests are one small write; no reason to let Nagle hold it.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The refusals an io error can carry: the peer said no with a RST.
fn io_failure(e: &io::Error) -> Option<Attempt> {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Some(Attempt::refused("connection refused")),
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Some(Attempt::refused("connection reset")),
        _ if e.get_ref().is_some_and(|i| i.is::<ResponseTooLarge>()) => {
            Some(Attempt::failed("response too large"))
        }
        _ => None,
    }
}

fn handshake_error(e: io::Error) -> Attempt {
    if let Some(tls_error) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return Attempt::failed(tls::reason(tls_error));
    }
    if let Some(a) = io_failure(&e) {
        return a;
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return Attempt::failed("tls: connection closed during handshake");
    }
    Attempt::failed(format!("tls: {e}"))
}

struct Answer {
    status: u16,
    body: Bytes,
}

/// One `GET` over `io` with `Connection: close`; the body is read only when asked for.
async fn exchange<S>(io: S, host: &str, path: &str, want_body: bool) -> Result<Answer, Attempt>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Capped::new(io, MAX_RESPONSE_BYTES));
    // hyper's read buffer is bounded too, so a never-ending header is cut by hyper's own
    // "too large" check as well as by the cap under it.
    let (mut sender, conn) = http1::Builder::new()
        .max_buf_size(MAX_RESPONSE_BYTES)
        .handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| http_failure(e, Phase::Head))?;
    let request = Request::get(path)
        .header(HOST, host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::new())
        .map_err(|e| Attempt::failed(format!("bad request: {e}")))?;

    // The connection is driven here rather than spawned, so that returning (or being
    // cancelled by the deadline) drops it: nothing outlives the attempt.
    let mut conn = std::pin::pin!(conn);
    let mut send = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        biased;
        r = &mut send => r.map_err(|e| http_failure(e, Phase::Head))?,
        r = &mut conn => {
            // The connection may finish in the same poll that completed the response
            // (or its error): `Connection: close`. Whatever it handed over is ready now.
            let handed_over = std::future::poll_fn(|cx| Poll::Ready(match send.as_mut().poll(cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            }))
            .await;
            match (handed_over, r) {
                (Some(Ok(response)), _) => response,
                (Some(Err(e)), _) | (None, Err(e)) => return Err(http_failure(e, Phase::Head)),
                (None, Ok(())) => return Err(Attempt::failed("connection closed before response")),
            }
        }
    };
    let status = response.status().as_u16();
    if !want_body {
        return Ok(Answer {
            status,
            body: Bytes::new(),
        });
    }

    let mut collect =
        std::pin::pin!(Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect());
    let mut conn_done = false;
    let body = loop {
        tokio::select! {
            biased;
            r = &mut collect => break r.map_err(body_failure)?.to_bytes(),
            r = &mut conn, if !conn_done => match r {
                Err(e) => return Err(http_failure(e, Phase::Body)),
                // The connection finished its work; what it read is in the body channel.
                Ok(()) => conn_done = true,
            },
        }
    };
    Ok(Answer { status, body })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
}

fn http_failure(e: hyper::Error, phase: Phase) -> Attempt {
    if let Some(a) = find_io(&e).and_then(io_failure) {
        return a;
    }
    if e.is_parse_too_large() {
        return Attempt::failed("response too large");
    }
    if e.is_parse() || e.is_parse_status() {
        return Attempt::failed(format!("garbage response: {e}"));
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return Attempt::failed(match phase {
            Phase::Head => "connection closed before response",
            Phase::Body => "connection closed mid-response",
        });
    }
    match find_io(&e) {
        Some(io) => Attempt::failed(format!("io: {io}")),
        None => Attempt::failed(format!("http: {e}")),
    }
}

fn body_failure(e: Box<dyn std::error::Error + Send + Sync>) -> Attempt {
    if e.is::<http_body_util::LengthLimitError>() {
        return Attempt::failed("response too large");
    }
    match e.downcast::<hyper::Error>() {
        Ok(h) => http_failure(*h, Phase::Body),
        Err(other) => Attempt::failed(format!("body: {other}")),
    }
}

fn find_io<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

/// Marker inside the io error a [`Capped`] stream returns once its budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("response too large")]
struct ResponseTooLarge;

/// A stream that lets at most `left` bytes be read from it, then errors.
///
/// The hard bound under hyper: whatever the peer sends (a megabyte of header, an endless
/// body), one attempt never reads more than the budget.
struct Capped<S> {
    inner: S,
    left: usize,
}

impl<S> Capped<S> {
    fn new(inner: S, budget: usize) -> Capped<S> {
        Capped {
            inner,
            left: budget,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if this.left == 0 {
            return Poll::Ready(Err(io::Error::other(ResponseTooLarge)));
        }
        if buf.remaining() <= this.left {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            this.left -= buf.filled().len() - before;
        } else {
            // The last stretch of the budget is smaller than the caller's buffer: read
            // into a buffer of exactly the budget so the socket gives up no more.
            let mut tmp = vec![0u8; this.left];
            let mut small = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut small))?;
            let n = small.filled().len();
            buf.put_slice(small.filled());
            this.left -= n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn capped_reads_stop_at_the_budget() {
        let data = [7u8; 100];
        let mut capped = Capped::new(&data[..], 30);
        let mut out = Vec::new();
        let err = capped.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(out.len(), 30);
        assert!(err.get_ref().unwrap().is::<ResponseTooLarge>());
        assert_eq!(io_failure(&err).unwrap().reason, "response too large");
    }

    #[test]
    fn io_errors_map_to_refusals() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            io_failure(&refused).unwrap().outcome,
            Outcome::Refused("connection refused".into())
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(io_failure(&reset).unwrap().reason, "connection reset");
        assert!(io_failure(&io::Error::from(io::ErrorKind::TimedOut)).is_none());
    }
}
