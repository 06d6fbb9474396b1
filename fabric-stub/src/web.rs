//! The built-in web role: answers every request with its instance name, and `/health` with 200.
//!
//! Run as a fabric role (`rota demo-backend --listen 127.0.0.1:{port} --name {instance}`),
//! it also reads its environment:
//!
//! | variable | routes it enables |
//! |---|---|
//! | `ROTA_DISK` (set by the guest agent) | `GET /disk/<file>` reads and `PUT /disk/<file>` writes a file on the differencing disk |
//! | `ROTA_AGENT` (set by the guest agent) | `POST /busy` and `POST /ready` tell the agent (Azure's StatusCheck) |
//! | `ROTA_WEB_TEST_HOOKS=1` | `POST /crash` exits with status 1; `POST /hang` stops answering anything, `/health` included |
//!
//! On stop it finishes the requests in flight (and closes idle keep-alive
//! connections) before returning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the web role can do beyond greeting; [`WebOptions::from_env`] reads it
/// from the variables a guest agent sets.
#[derive(Clone, Debug, Default)]
pub struct WebOptions {
    /// The differencing disk, for `/disk/<file>`.
    pub disk: Option<PathBuf>,
    /// The guest agent, for `/busy` and `/ready`.
    pub agent: Option<SocketAddr>,
    /// Enables `/crash` and `/hang` (tests and demos of recycling).
    pub test_hooks: bool,
}

impl WebOptions {
    pub fn from_env() -> WebOptions {
        WebOptions {
            disk: std::env::var_os("ROTA_DISK").map(PathBuf::from),
            agent: std::env::var("ROTA_AGENT")
                .ok()
                .and_then(|a| a.parse().ok()),
            test_hooks: std::env::var("ROTA_WEB_TEST_HOOKS").is_ok_and(|v| v == "1"),
        }
    }
}

struct Role {
    greeting: Bytes,
    options: WebOptions,
    hung: AtomicBool,
}

/// Serves the web role on `listener` until `stop` fires, with the options its
/// environment gives (see [`WebOptions::from_env`]).
///
/// `GET /health` answers `200 ok`; every other path answers
/// `hello from <instance>`, so a client can see which instance served it.
pub async fn serve(listener: TcpListener, instance: String, stop: CancellationToken) {
    serve_with(listener, instance, WebOptions::from_env(), stop).await
}

/// [`serve`] with explicit options.
pub async fn serve_with(
    listener: TcpListener,
    instance: String,
    options: WebOptions,
    stop: CancellationToken,
) {
    let role = Arc::new(Role {
        greeting: Bytes::from(format!("hello from {instance}\n")),
        options,
        hung: AtomicBool::new(false),
    });
    crate::http::serve(listener, stop, move |req| {
        let role = role.clone();
        async move { handle(&role, req).await }
    })
    .await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

async fn handle(role: &Role, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    if role.hung.load(Ordering::Relaxed) {
        // A hang: the process lives, the port accepts, nothing answers.
        std::future::pending::<()>().await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (&method, path.as_str()) {
        (_, "/health") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/crash") if role.options.test_hooks => {
            eprintln!("web role: /crash asked for, exiting with status 1");
            std::process::exit(1);
        }
        (&Method::POST, "/hang") if role.options.test_hooks => {
            role.hung.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "hanging from now on\n")
        }
        (&Method::POST, "/busy" | "/ready") => {
            let Some(agent) = role.options.agent else {
                return text(
                    StatusCode::NOT_FOUND,
                    "no guest agent (ROTA_AGENT is not set)\n",
                );
            };
            let target = if path == "/busy" {
                crate::agent::BUSY_PATH
            } else {
                crate::agent::READY_PATH
            };
            match crate::http::request(agent, "POST", target, None, Duration::from_secs(2)).await {
                Ok((200, body)) => text(StatusCode::OK, body),
                Ok((code, _)) => text(StatusCode::BAD_GATEWAY, format!("agent answered {code}\n")),
                Err(e) => text(StatusCode::BAD_GATEWAY, format!("{e}\n")),
            }
        }
        (_, p) if p.starts_with("/disk/") => disk(role, &method, &p["/disk/".len()..], req).await,
        _ => text(StatusCode::OK, role.greeting.clone()),
    }
}

/// `GET`/`PUT /disk/<file>` on the differencing disk. Names are plain file
/// names: no folders, so a request cannot reach outside the disk.
async fn disk(
    role: &Role,
    method: &Method,
    name: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let Some(dir) = &role.options.disk else {
        return text(StatusCode::NOT_FOUND, "no disk (ROTA_DISK is not set)\n");
    };
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return text(
            StatusCode::BAD_REQUEST,
            "file names are letters, digits, '.', '_' and '-'\n",
        );
    }
    let path = dir.join(name);
    match *method {
        Method::GET => match tokio::fs::read(&path).await {
            Ok(bytes) => text(StatusCode::OK, bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                text(StatusCode::NOT_FOUND, "no such file\n")
            }
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        Method::PUT | Method::POST => {
            let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "at most 1 MiB\n"),
            };
            match tokio::fs::write(&path, &body).await {
                Ok(()) => text(StatusCode::OK, format!("wrote {} bytes\n", body.len())),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT\n"),
    }
}
