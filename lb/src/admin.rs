//! The admin listener: `/metrics` (Prometheus text), a JSON state API and operator actions.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/metrics` | every metric, Prometheus text format |
//! | GET | `/healthz` | `ok` while the process serves |
//! | GET | `/api/v1/endpoints` | every endpoint and instance: rotation, why, live connections |
//! | GET | `/api/v1/endpoints/{endpoint}` | one endpoint |
//! | POST | `/api/v1/endpoints/{endpoint}/instances/{instance}/drain` | out of rotation for that endpoint |
//! | POST | `/api/v1/endpoints/{endpoint}/instances/{instance}/enable` | back (subject to its probe) |
//! | POST | `/api/v1/instances/{instance}/drain` and `/enable` | the same on every endpoint |
//!
//! Other paths go to the [`AdminExtension`]s in turn (the fabric stub adds its own).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::endpoint::Endpoint;
use crate::rotation::{AdminAction, Rotation, RotationError, RotationInput};

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// A JSON reply: status and body.
pub type Reply = (StatusCode, serde_json::Value);

/// Extra admin routes, tried in order for paths the balancer does not own.
pub trait AdminExtension: Send + Sync {
    /// `None` when the path is not this extension's.
    fn handle<'a>(
        &'a self,
        method: &'a Method,
        path: &'a str,
        body: Bytes,
    ) -> Option<Pin<Box<dyn Future<Output = Reply> + Send + 'a>>>;
}

/// What the admin handlers read and act on.
#[derive(Clone)]
pub struct AdminState {
    pub rotation: Arc<Rotation>,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub registry: Registry,
    pub extensions: Vec<Arc<dyn AdminExtension>>,
}

/// Serves the admin API on `listener` until `stop` fires.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    let state = Arc::new(state);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(
            async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, req).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "admin connection failed") },
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            }
            .instrument(tracing::debug_span!("admin", %peer)),
        );
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json((
                StatusCode::PAYLOAD_TOO_LARGE,
                error_body("request body over 64 KiB"),
            ))
        }
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => metrics(&state.registry),
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["api", "v1", "endpoints"]) => json((
            StatusCode::OK,
            serde_json::json!({ "endpoints": state.rotation.describe(&state.endpoints) }),
        )),
        (&Method::GET, ["api", "v1", "endpoints", name]) => {
            match state
                .rotation
                .describe(&state.endpoints)
                .into_iter()
                .find(|e| e.name == *name)
            {
                Some(e) => json((StatusCode::OK, serde_json::json!(e))),
                None => json((
                    StatusCode::NOT_FOUND,
                    error_body(&format!("no endpoint named {name:?}")),
                )),
            }
        }
        (&Method::POST, ["api", "v1", "endpoints", endpoint, "instances", instance, action]) => {
            admin_action(state, Some(endpoint), instance, action)
        }
        (&Method::POST, ["api", "v1", "instances", instance, action]) => {
            admin_action(state, None, instance, action)
        }
        _ => {
            for ext in &state.extensions {
                if let Some(fut) = ext.handle(&method, &path, body.clone()) {
                    return json(fut.await);
                }
            }
            json((
                StatusCode::NOT_FOUND,
                error_body(&format!("no route for {method} {path}")),
            ))
        }
    }
}

fn admin_action(
    state: &AdminState,
    endpoint: Option<&str>,
    instance: &str,
    action: &str,
) -> Response<Full<Bytes>> {
    let action = match action {
        "drain" => AdminAction::Drain,
        "enable" => AdminAction::Enable,
        other => {
            return json((
                StatusCode::NOT_FOUND,
                error_body(&format!(
                    "unknown action {other:?}: expected \"drain\" or \"enable\""
                )),
            ))
        }
    };
    let input = RotationInput::Admin {
        endpoint: endpoint.map(Arc::from),
        instance: Arc::from(instance),
        action,
    };
    match state.rotation.apply(input) {
        Ok(n) => json((
            StatusCode::OK,
            serde_json::json!({ "instance": instance, "action": format!("{action:?}").to_lowercase(), "endpoints_changed": n }),
        )),
        Err(e @ (RotationError::UnknownEndpoint(_) | RotationError::UnknownInstance(_))) => {
            json((StatusCode::NOT_FOUND, error_body(&e.to_string())))
        }
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut buf) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("metrics encoding failed: {e}\n"),
        );
    }
    let mut resp = Response::new(Full::new(Bytes::from(buf)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub fn error_body(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}

fn json((status, value): Reply) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
