//! A minimal HTTP/1.1 client over hyper for the fabric, the agent and the CLI: one request per connection.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest response body read.
const MAX_BODY: usize = 1024 * 1024;

/// Sends one request and returns the status and the body, all within `timeout`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<(u16, Bytes), String> {
    tokio::time::timeout(timeout, send(addr, method, path, body))
        .await
        .map_err(|_| format!("no answer from {addr} within {timeout:?}"))?
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Bytes>,
) -> Result<(u16, Bytes), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let has_body = body.is_some();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("connection", "close")
        .header(
            "user-agent",
            concat!("rota-fabric/", env!("CARGO_PKG_VERSION")),
        );
    if has_body {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request to {addr}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}
