//! The built-in web role: answers every request with its instance name, and `/health` with 200.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Serves the web role on `listener` until `stop` fires.
///
/// `GET /health` answers `200 ok`; every other path answers
/// `hello from <instance>`, so a client can see which instance served it.
pub async fn serve(listener: TcpListener, instance: String, stop: CancellationToken) {
    let greeting = Bytes::from(format!("hello from {instance}\n"));
    let instance: Arc<str> = instance.into();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!(%instance, error = %e, "web accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let greeting = greeting.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let greeting = greeting.clone();
                async move {
                    let resp = if req.uri().path() == "/health" {
                        Response::new(Full::new(Bytes::from_static(b"ok\n")))
                    } else {
                        Response::new(Full::new(greeting))
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}
