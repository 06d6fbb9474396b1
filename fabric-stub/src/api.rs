//! The fabric's admin routes under `/api/v1/fabric`, and a small server for `rota fabric run`.
//!
//! | method | path | body | what |
//! |---|---|---|---|
//! | GET | `/api/v1/fabric` | | roles, hosts, instances, the current or last operation |
//! | GET | `/api/v1/fabric/topology` | | the published topology |
//! | GET | `/api/v1/fabric/history` | | every instance start with its reason |
//! | POST | `/api/v1/fabric/roles` | a role: `{"name","instances","command",...}` | deploy |
//! | POST | `/api/v1/fabric/roles/{role}/scale` | `{"instances": N}` | scale out or in |
//! | POST | `/api/v1/fabric/roles/{role}/update` | `{"command": [...], "mode": "auto"\|"manual"}` (both optional) | rolling update |
//! | POST | `/api/v1/fabric/instances/{instance}/reboot` / `reimage` | | |
//! | POST | `/api/v1/fabric/hosts/{host}/fail` / `repair` | | |
//! | POST | `/api/v1/fabric/fault-domains/{fd}/fail` | | |
//! | POST | `/api/v1/fabric/host-update` | | reboot hosts one at a time |
//! | POST | `/api/v1/fabric/continue` | | next update domain of a manual update |
//!
//! Operations answer `200` with their report when they finish within 2 s,
//! else `202` with `{"operation": id}`; progress is in `GET /api/v1/fabric`.
//! Errors: `{"error": "..."}` with 400, 404 or 409 (another operation runs).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fabric::{Fabric, Operation, RoleSpec};

/// The path prefix the fabric owns.
pub const PREFIX: &str = "/api/v1/fabric";

/// How long an operation may take before the API answers 202 instead of waiting.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// Routes one admin request; `None` when `path` is not under [`PREFIX`].
pub async fn route(fabric: &Fabric, method: &str, path: &str, body: &[u8]) -> Option<(u16, Value)> {
    let rest = path.strip_prefix(PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let segments: Vec<&str> = rest
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Some((400, json!({"error": format!("expected a JSON body: {e}")}))),
        }
    };
    let op = match (method, segments.as_slice()) {
        ("GET", []) => return Some((200, fabric.status())),
        ("GET", ["topology"]) => return Some((200, json!(*fabric.topology().borrow().clone()))),
        ("GET", ["history"]) => return Some((200, json!({"starts": fabric.history()}))),
        ("POST", ["roles"]) => match serde_json::from_value::<RoleSpecBody>(body) {
            Ok(b) => Operation::Deploy(b.into()),
            Err(e) => {
                return Some((
                    400,
                    json!({"error": format!("expected a role {{\"name\", \"instances\", \"command\"}}: {e}")}),
                ))
            }
        },
        ("POST", ["roles", role, "scale"]) => match body["instances"].as_u64() {
            Some(n) => Operation::Scale {
                role: role.to_string(),
                instances: n.min(u64::from(u32::MAX)) as u32,
            },
            None => return Some((400, json!({"error": "expected {\"instances\": N}"}))),
        },
        ("POST", ["roles", role, "update"]) => {
            let command = match &body["command"] {
                Value::Null => None,
                Value::Array(a) if a.iter().all(Value::is_string) => Some(
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect(),
                ),
                _ => {
                    return Some((
                        400,
                        json!({"error": "expected \"command\" as an array of strings"}),
                    ))
                }
            };
            let mode = match body["mode"].as_str() {
                None => None,
                Some(m) => match rota_config::UpdateMode::from_name(m) {
                    Some(m) => Some(m),
                    None => {
                        return Some((
                            400,
                            json!({"error": format!("expected mode \"auto\" or \"manual\", found {m:?}")}),
                        ))
                    }
                },
            };
            Operation::Update {
                role: role.to_string(),
                command,
                mode,
            }
        }
        ("POST", ["instances", name, "reboot"]) => Operation::Reboot {
            instance: name.to_string(),
        },
        ("POST", ["instances", name, "reimage"]) => Operation::Reimage {
            instance: name.to_string(),
        },
        ("POST", ["hosts", host, "fail"]) => Operation::FailHost {
            host: host.to_string(),
        },
        ("POST", ["hosts", host, "repair"]) => Operation::RepairHost {
            host: host.to_string(),
        },
        ("POST", ["fault-domains", fd, "fail"]) => match fd.parse() {
            Ok(fd) => Operation::FailFaultDomain { fault_domain: fd },
            Err(_) => {
                return Some((
                    400,
                    json!({"error": format!("expected a fault-domain number, found {fd:?}")}),
                ))
            }
        },
        ("POST", ["host-update"]) => Operation::HostUpdate,
        ("POST", ["continue"]) => Operation::Continue,
        _ => {
            return Some((
                404,
                json!({"error": format!("no fabric route for {method} {path}")}),
            ))
        }
    };
    let ticket = match fabric.begin(op) {
        Ok(t) => t,
        Err(e) => return Some((e.http_status(), json!({"error": e.to_string()}))),
    };
    let id = ticket.id();
    let mut task = tokio::spawn(ticket.run());
    match tokio::time::timeout(SYNC_WAIT, &mut task).await {
        Ok(Ok(Ok(report))) => Some((200, json!(report))),
        Ok(Ok(Err(e))) => Some((
            e.http_status(),
            json!({"error": e.to_string(), "operation": id}),
        )),
        Ok(Err(e)) => Some((500, json!({"error": format!("operation task failed: {e}")}))),
        Err(_) => Some((
            202,
            json!({"operation": id, "state": "running", "progress": format!("GET {PREFIX}")}),
        )),
    }
}

/// A role as the deploy route reads it; domain counts default like the config.
#[derive(serde::Deserialize)]
struct RoleSpecBody {
    name: String,
    instances: u32,
    command: Vec<String>,
    #[serde(default)]
    update_domains: Option<u32>,
    #[serde(default)]
    fault_domains: Option<u32>,
    #[serde(default)]
    base_image: Option<std::path::PathBuf>,
    #[serde(default)]
    health_path: Option<String>,
}

impl From<RoleSpecBody> for RoleSpec {
    fn from(b: RoleSpecBody) -> RoleSpec {
        RoleSpec {
            name: b.name,
            instances: b.instances,
            command: b.command,
            update_domains: b
                .update_domains
                .unwrap_or(rota_config::DEFAULT_UPDATE_DOMAINS),
            fault_domains: b
                .fault_domains
                .unwrap_or(rota_config::DEFAULT_FAULT_DOMAINS),
            base_image: b.base_image,
            health_path: b.health_path,
        }
    }
}

/// Serves the fabric routes, `/metrics` and `/healthz` on `listener` until
/// `stop` fires (`rota fabric run`, a fabric without a balancer).
pub async fn serve(
    listener: TcpListener,
    fabric: Fabric,
    registry: prometheus::Registry,
    stop: CancellationToken,
) {
    crate::http::serve(listener, stop, move |req| {
        let (fabric, registry) = (fabric.clone(), registry.clone());
        async move { handle(&fabric, &registry, req).await }
    })
    .await;
}

async fn handle(
    fabric: &Fabric,
    registry: &prometheus::Registry,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(413, json!({"error": "request body over 64 KiB"})),
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        ("GET", "/metrics") => {
            let mut buf = Vec::new();
            let _ = prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            );
            Response::new(Full::new(Bytes::from(buf)))
        }
        _ => match route(fabric, &method, &path, &body).await {
            Some((code, value)) => reply(code, value),
            None => reply(
                404,
                json!({"error": format!("no route for {method} {path}")}),
            ),
        },
    }
}

fn reply(code: u16, value: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    )));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
