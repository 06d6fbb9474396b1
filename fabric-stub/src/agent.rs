//! The guest agent (`rota agent`): its own process per instance; supervises the role process and serves its status.
//!
//! # HTTP, on the agent's address
//!
//! | method | path | who | what |
//! |---|---|---|---|
//! | GET | `/rota/agent/v1/status` | balancer, fabric | [`rota_probe::agent::AgentStatus`] plus `role_pid`, `role_starts`, `crashes`, `incarnation` |
//! | POST | `/rota/agent/v1/busy` | the role | report `Busy` (Azure's StatusCheck): out of rotation, not restarted |
//! | POST | `/rota/agent/v1/ready` | the role | clear `Busy` |
//! | POST | `/rota/agent/v1/stop` | fabric | `{"grace_ms": N}`: `Stopping`, SIGTERM to the role, SIGKILL after the grace, then the agent exits |
//! | GET | `/rota/agent/v1/topology` | the role | the service topology the fabric last wrote |
//!
//! The role process gets `ROTA_AGENT` (this address), `ROTA_INSTANCE`, `ROTA_ROLE`,
//! `ROTA_PORT`, `ROTA_DISK`, `ROTA_BASE` and `ROTA_TOPOLOGY` in its environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use rota_probe::agent::{AgentState, AgentStatus, STATUS_PATH};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::lifecycle::{AfterExit, Lifecycle, Policy};
use crate::os;

/// The file an agent writes into its instance folder once it listens.
pub const AGENT_FILE: &str = "agent.json";
/// Paths of the role-facing calls.
pub const BUSY_PATH: &str = "/rota/agent/v1/busy";
pub const READY_PATH: &str = "/rota/agent/v1/ready";
pub const STOP_PATH: &str = "/rota/agent/v1/stop";
pub const TOPOLOGY_PATH: &str = "/rota/agent/v1/topology";

/// `rota agent ...`: what one guest agent supervises.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Instance name, e.g. `web-0`.
    #[arg(long)]
    pub instance: String,
    /// Role name, e.g. `web`.
    #[arg(long, default_value = "")]
    pub role: String,
    /// Where the status endpoint listens; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The instance folder: `agent.json` is written here.
    #[arg(long)]
    pub dir: PathBuf,
    /// The role's port on 127.0.0.1, probed to decide `Ready`.
    #[arg(long)]
    pub port: u16,
    /// HTTP path probed on the role's port (200 = answering); default a TCP connect.
    #[arg(long)]
    pub health_path: Option<String>,
    /// How often the role is probed.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// Grace given to the role when the agent itself is asked to stop by a signal.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Crashes within `--crash-window` that end in `Failed`.
    #[arg(long, default_value_t = 5)]
    pub crash_limit: u32,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub crash_window: Duration,
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub backoff_initial: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// The differencing-disk folder (passed to the role as `ROTA_DISK`).
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// The base-image folder (`ROTA_BASE`).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// The topology file (`ROTA_TOPOLOGY`, served on `/rota/agent/v1/topology`).
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Which start of the instance this is, as counted by the fabric.
    #[arg(long, default_value_t = 0)]
    pub incarnation: u64,
    /// The role process: program and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    rota_config::parse_duration(text)
}

/// What `agent.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentFile {
    pub pid: u32,
    pub agent: SocketAddr,
    pub instance: String,
    pub incarnation: u64,
}

/// The status body: the protocol's fields plus the agent's own counters
/// (unknown fields are ignored by the balancer's probe).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FullStatus {
    #[serde(flatten)]
    pub status: AgentStatus,
    #[serde(default)]
    pub role_pid: Option<u32>,
    /// Role processes started by this agent (1 + restarts after crashes).
    #[serde(default)]
    pub role_starts: u64,
    #[serde(default)]
    pub crashes: u64,
    #[serde(default)]
    pub incarnation: u64,
}

struct Shared {
    lifecycle: Lifecycle,
    since: SystemTime,
    role_pid: Option<u32>,
    role_starts: u64,
    crashes: u64,
    stop_grace: Option<Duration>,
}

/// Runs a guest agent until it is told to stop (HTTP `stop` or `shutdown`),
/// then stops its role process and returns.
pub async fn run(args: AgentArgs, shutdown: CancellationToken) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let policy = Policy {
        backoff_initial: args.backoff_initial,
        backoff_max: args.backoff_max,
        crash_limit: args.crash_limit.max(1),
        crash_window: args.crash_window,
    };
    let shared = Arc::new(Mutex::new(Shared {
        lifecycle: Lifecycle::new(policy),
        since: SystemTime::now(),
        role_pid: None,
        role_starts: 0,
        crashes: 0,
        stop_grace: None,
    }));
    let stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let span = tracing::info_span!("agent", instance = %args.instance);
    tokio::spawn(
        serve(
            listener,
            args.clone(),
            shared.clone(),
            stop.clone(),
            server_stop.clone(),
        )
        .instrument(span.clone()),
    );
    // Tell the fabric where we are only once we listen.
    std::fs::create_dir_all(&args.dir)?;
    let file = AgentFile {
        pid: std::process::id(),
        agent: addr,
        instance: args.instance.clone(),
        incarnation: args.incarnation,
    };
    let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
    os::write_atomic(&args.dir.join(AGENT_FILE), &json)?;
    info!(parent: &span, agent = %addr, "guest agent listening");

    {
        let (stop, shared, grace) = (stop.clone(), shared.clone(), args.grace);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            shared.lock().unwrap().stop_grace.get_or_insert(grace);
            stop.cancel();
        });
    }
    supervise(&args, addr, &shared, &stop)
        .instrument(span)
        .await;
    // Keep answering `Stopped` briefly so the fabric's last heartbeat sees it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server_stop.cancel();
    Ok(())
}

fn change(shared: &Mutex<Shared>, f: impl FnOnce(&mut Lifecycle)) {
    let mut s = shared.lock().unwrap();
    let before = s.lifecycle.state();
    f(&mut s.lifecycle);
    if s.lifecycle.state() != before {
        s.since = SystemTime::now();
        info!(from = %before, to = %s.lifecycle.state(), detail = s.lifecycle.detail(), "instance state");
    }
}

/// Starts the role process and keeps it running: restarts after crashes with
/// backoff, probes it, and stops it on request.
async fn supervise(
    args: &AgentArgs,
    addr: SocketAddr,
    shared: &Mutex<Shared>,
    stop: &CancellationToken,
) {
    loop {
        if stop.is_cancelled() {
            change(shared, |l| {
                l.stopping();
                l.exited("not running", tokio::time::Instant::now());
            });
            return;
        }
        let mut child = match spawn_role(args, addr) {
            Ok(child) => child,
            Err(e) => {
                warn!(error = %e, command = ?args.command, "cannot start the role process");
                let after = {
                    let mut s = shared.lock().unwrap();
                    s.crashes += 1;
                    s.since = SystemTime::now();
                    s.lifecycle
                        .exited(&format!("spawn failed: {e}"), tokio::time::Instant::now())
                };
                if !wait_after_exit(after, stop).await {
                    return finish_failed(shared, stop).await;
                }
                continue;
            }
        };
        let pid = child.id();
        {
            let mut s = shared.lock().unwrap();
            s.role_pid = pid;
            s.role_starts += 1;
        }
        change(shared, Lifecycle::started);
        info!(pid = ?pid, "role process started");
        let mut tick = tokio::time::interval(args.probe_interval);
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                _ = tick.tick() => {
                    let ok = probe_role(args).await;
                    change(shared, |l| l.probed(ok));
                }
                _ = stop.cancelled() => {
                    change(shared, Lifecycle::stopping);
                    let grace = shared.lock().unwrap().stop_grace.unwrap_or(args.grace);
                    if let Some(pid) = pid {
                        os::signal_pid(pid, "TERM");
                    }
                    let status = match tokio::time::timeout(grace, child.wait()).await {
                        Ok(status) => status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                        Err(_) => {
                            warn!(?grace, "role process still running after its grace; killing it");
                            let _ = child.kill().await;
                            "killed after the grace".to_string()
                        }
                    };
                    break status;
                }
            }
        };
        let after = {
            let mut s = shared.lock().unwrap();
            s.role_pid = None;
            let before = s.lifecycle.state();
            let after = s.lifecycle.exited(&status, tokio::time::Instant::now());
            if after != AfterExit::Stopped {
                s.crashes += 1;
            }
            if s.lifecycle.state() != before {
                s.since = SystemTime::now();
            }
            info!(%status, state = %s.lifecycle.state(), "role process exited");
            after
        };
        if after == AfterExit::Stopped {
            return;
        }
        if !wait_after_exit(after, stop).await {
            return finish_failed(shared, stop).await;
        }
    }
}

/// Waits out a restart backoff. False when the agent must not restart (a
/// crash loop); a stop during the wait returns true and ends at the loop top.
async fn wait_after_exit(after: AfterExit, stop: &CancellationToken) -> bool {
    match after {
        AfterExit::RestartAfter(wait) => {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
            true
        }
        AfterExit::GiveUp | AfterExit::Stopped => false,
    }
}

/// A crash loop: stay `Failed` (answering status) until told to stop.
async fn finish_failed(shared: &Mutex<Shared>, stop: &CancellationToken) {
    stop.cancelled().await;
    change(shared, |l| {
        l.stopping();
        l.exited("not running", tokio::time::Instant::now());
    });
}

fn spawn_role(args: &AgentArgs, addr: SocketAddr) -> std::io::Result<tokio::process::Child> {
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("ROTA_AGENT", addr.to_string())
        .env("ROTA_INSTANCE", &args.instance)
        .env("ROTA_ROLE", &args.role)
        .env("ROTA_PORT", args.port.to_string())
        .stdin(std::process::Stdio::null())
        // The role stays in the agent's process group: killing the group
        // (a host failure, a reboot) takes the role and its children too.
        .kill_on_drop(true);
    if let Some(disk) = &args.disk {
        cmd.env("ROTA_DISK", disk);
        cmd.current_dir(disk);
    }
    if let Some(base) = &args.base {
        cmd.env("ROTA_BASE", base);
    }
    if let Some(topology) = &args.topology {
        cmd.env("ROTA_TOPOLOGY", topology);
    }
    cmd.spawn()
}

/// One probe of the role on 127.0.0.1:`port`, within 4/5 of the probe interval
/// (at most 2 s): an HTTP 200 on `health_path`, or an accepted TCP connection.
async fn probe_role(args: &AgentArgs) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let deadline =
        (args.probe_interval / 5 * 4).clamp(Duration::from_millis(50), Duration::from_secs(2));
    match &args.health_path {
        Some(path) => matches!(
            crate::http::request(addr, "GET", path, None, deadline).await,
            Ok((200, _))
        ),
        None => matches!(
            tokio::time::timeout(deadline, TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
    }
}

async fn serve(
    listener: TcpListener,
    args: AgentArgs,
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
    server_stop: CancellationToken,
) {
    let args = Arc::new(args);
    crate::http::serve(listener, server_stop, move |req| {
        let (args, shared, stop) = (args.clone(), shared.clone(), stop.clone());
        async move { handle(&args, &shared, &stop, req).await }
    })
    .await;
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(
    args: &AgentArgs,
    shared: &Mutex<Shared>,
    stop: &CancellationToken,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    match (method, path.as_str()) {
        (Method::GET, STATUS_PATH) => json_response(StatusCode::OK, &status(args, shared)),
        (Method::POST, BUSY_PATH) => {
            change(shared, |l| l.set_busy(true));
            json_response(StatusCode::OK, &status(args, shared))
        }
        (Method::POST, READY_PATH) => {
            change(shared, |l| l.set_busy(false));
            json_response(StatusCode::OK, &status(args, shared))
        }
        (Method::POST, STOP_PATH) => {
            let grace = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["grace_ms"].as_u64())
                .map(Duration::from_millis)
                .unwrap_or(args.grace);
            shared.lock().unwrap().stop_grace.get_or_insert(grace);
            change(shared, Lifecycle::stopping);
            stop.cancel();
            json_response(StatusCode::ACCEPTED, &status(args, shared))
        }
        (Method::GET, TOPOLOGY_PATH) => match args.topology.as_ref().map(std::fs::read) {
            Some(Ok(bytes)) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                json_response(StatusCode::OK, &value)
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no topology yet"}),
            ),
        },
        (m, p) => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": format!("no route for {m} {p}")}),
        ),
    }
}

fn status(args: &AgentArgs, shared: &Mutex<Shared>) -> FullStatus {
    let s = shared.lock().unwrap();
    FullStatus {
        status: AgentStatus {
            state: s.lifecycle.state(),
            instance: Some(args.instance.clone()),
            detail: Some(s.lifecycle.detail().to_string()),
            since: Some(os::rfc3339(s.since)),
        },
        role_pid: s.role_pid,
        role_starts: s.role_starts,
        crashes: s.crashes,
        incarnation: args.incarnation,
    }
}

/// Asks the agent at `agent` for its status within `timeout`.
pub async fn fetch_status(agent: SocketAddr, timeout: Duration) -> Result<FullStatus, String> {
    let (code, body) = crate::http::request(agent, "GET", STATUS_PATH, None, timeout).await?;
    if code != 200 {
        return Err(format!("agent {agent} answered http {code}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("agent {agent}: bad status: {e}"))
}

/// Whether a state counts as up for the fabric's bookkeeping (the balancer
/// decides rotation itself from the same status).
pub fn is_ready(state: AgentState) -> bool {
    state == AgentState::Ready
}
