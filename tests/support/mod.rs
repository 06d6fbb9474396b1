//! Test helpers: polling with a deadline, real backend servers on port 0, rota started from TOML.
#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long any test waits for a state before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `probe` until it returns `Ok`, failing after `DEADLINE` with the last `Err` it saw.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_within(DEADLINE, what, probe).await
}

/// Accepts on `listener` until `stop` fires, running `handle` on each
/// connection in its own task; `stop` ends those tasks too.
fn accept_until<F, Fut>(listener: TcpListener, stop: CancellationToken, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = stop.cancelled() => break,
                r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            };
            let (work, stop) = (handle(stream), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = work => {}
                }
            });
        }
    });
}

/// What a test backend does with a connection.
#[derive(Clone)]
pub enum Behaviour {
    /// Echo every byte; at end of stream, shut down writing.
    Echo,
    /// Write `"<name>\n"` at once (a server that speaks first), then echo.
    Greet(String),
    /// Read to end of stream, then reply `"got <n>\n"` and close.
    CountThenReply,
    /// Write the payload, shut down writing, then count what the client still sends.
    SpeakThenListen(Vec<u8>),
    /// Accept and hold; record when the client side closes.
    Hold,
}

/// A backend on 127.0.0.1:0 that stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections whose client side reached end of stream or failed.
    pub closed: Arc<AtomicUsize>,
    /// Byte counts seen after the server's own half-close (SpeakThenListen).
    pub heard: Arc<Mutex<Vec<usize>>>,
    stop: CancellationToken,
}

impl Backend {
    pub async fn start(behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let heard = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (a, c, h) = (accepted.clone(), closed.clone(), heard.clone());
        accept_until(listener, stop.clone(), move |stream| {
            a.fetch_add(1, Ordering::SeqCst);
            let (b, c, h) = (behaviour.clone(), c.clone(), h.clone());
            async move {
                handle(b, stream, h).await;
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        Backend {
            addr,
            accepted,
            closed,
            heard,
            stop,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn handle(b: Behaviour, mut s: TcpStream, heard: Arc<Mutex<Vec<usize>>>) {
    let mut buf = vec![0u8; 64 * 1024];
    match b {
        Behaviour::Echo | Behaviour::Greet(_) => {
            if let Behaviour::Greet(name) = &b {
                if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown().await;
        }
        Behaviour::CountThenReply => {
            let mut total = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => return,
                }
            }
            let _ = s.write_all(format!("got {total}\n").as_bytes()).await;
            let _ = s.shutdown().await;
        }
        Behaviour::SpeakThenListen(payload) => {
            if s.write_all(&payload).await.is_err() {
                return;
            }
            let _ = s.shutdown().await;
            let mut total = 0;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(_) => return,
                }
            }
            heard.lock().unwrap().push(total);
        }
        Behaviour::Hold => loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        },
    }
}

/// A free loopback port for tools that cannot take port 0 themselves (nginx):
/// the fabric's choice, below the ephemeral range so that no test's outgoing
/// connection can take it before the tool binds it.
pub fn free_port() -> u16 {
    rota_fabric::os::free_port().expect("a free loopback port")
}

/// Starts rota from TOML text (admin on port 0 unless the text sets it).
pub async fn start_rota(toml: &str) -> rota::Rota {
    let loaded = rota_config::parse(toml, "test.toml")
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{toml}"));
    rota::Rota::start(loaded.config).await.expect("rota starts")
}

/// Starts rota with one endpoint `web` (settings lines in `extra`) over a pool
/// `web` of the given backends, named `web-<i>`.
pub async fn start_rota_over(extra: &str, addrs: &[SocketAddr]) -> rota::Rota {
    start_rota(&format!(
        "{}{}",
        endpoint_toml(extra),
        pool_toml("web", addrs)
    ))
    .await
}

/// A `[[pool]]` block for the given backends, named `<pool>-<i>`.
pub fn pool_toml(pool: &str, addrs: &[SocketAddr]) -> String {
    let mut s = format!("[[pool]]\nname = \"{pool}\"\n");
    for (i, a) in addrs.iter().enumerate() {
        s.push_str(&format!(
            "[[pool.backend]]\nname = \"{pool}-{i}\"\naddress = \"{a}\"\n"
        ));
    }
    s
}

/// An endpoint on 127.0.0.1:0 over pool `web`, with extra settings lines.
pub fn endpoint_toml(extra: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n[[endpoint]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n{extra}\n")
}

/// Connects and reads the greeting line of a `Greet` backend.
pub async fn greeted(addr: SocketAddr) -> io::Result<(String, TcpStream)> {
    let mut s = TcpStream::connect(addr).await?;
    let line = read_line(&mut s).await?;
    Ok((line, s))
}

/// Connects from a chosen loopback source address (port 0), reads the greeting.
pub async fn greeted_from(source: std::net::IpAddr, addr: SocketAddr) -> io::Result<String> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let mut s = socket.connect(addr).await?;
    read_line(&mut s).await
}

pub async fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match tokio::time::timeout(DEADLINE, s.read(&mut b)).await {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no greeting")),
            Ok(Ok(0)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("eof after {line:?}"),
                ))
            }
            Ok(Ok(_)) if b[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(Ok(_)) => line.push(b[0]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// One HTTP/1.1 request (hyper, through the fabric's client) with an optional
/// body; returns status and body. Connection errors are `Err`.
pub async fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<String>,
) -> io::Result<(u16, String)> {
    let (status, body) =
        rota_fabric::http::request(addr, method, path, body.map(Into::into), DEADLINE)
            .await
            .map_err(io::Error::other)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A request to the admin API, which must answer; returns status and body.
pub async fn http(method: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    request(method, addr, path, None)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// The admin API's JSON for every endpoint.
pub async fn endpoints_json(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http("GET", admin, "/api/v1/endpoints").await;
    assert_eq!(status, 200, "GET /api/v1/endpoints: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("admin JSON: {e}: {body}"))
}

/// One instance's JSON from the admin API.
pub async fn instance_json(admin: SocketAddr, endpoint: &str, instance: &str) -> serde_json::Value {
    let all = endpoints_json(admin).await;
    all["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["name"] == endpoint))
        .and_then(|e| e["instances"].as_array())
        .and_then(|is| is.iter().find(|i| i["name"] == instance))
        .cloned()
        .unwrap_or_else(|| panic!("no instance {instance} on {endpoint} in {all}"))
}

/// The `rota` binary run as a child process; killed when dropped.
pub struct RotaProcess {
    pub child: std::process::Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl RotaProcess {
    pub fn spawn(args: &[&str]) -> RotaProcess {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_rota"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rota");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                stdout.clone(),
            ),
            (
                Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
                stderr.clone(),
            ),
        ] {
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        RotaProcess {
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        // Log lines may carry ANSI colour codes; strip them for matching.
        strip_ansi(&self.stderr.lock().unwrap())
    }

    /// Waits for a log line containing `needle` and returns the value after `key=` on it.
    pub async fn log_value(&self, needle: &str, key: &str) -> String {
        eventually(&format!("a log line with {needle:?}"), || async {
            let logs = self.stderr();
            logs.lines()
                .filter(|l| l.contains(needle))
                .find_map(|l| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{key}=")).map(|v| v.to_owned()))
                })
                .ok_or(logs)
        })
        .await
    }

    /// [`RotaProcess::log_value`] parsed as a socket address.
    pub async fn log_addr(&self, needle: &str, key: &str) -> SocketAddr {
        let value = self.log_value(needle, key).await;
        value
            .parse()
            .unwrap_or_else(|e| panic!("{key}={value:?} on {needle:?} is not an address: {e}"))
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        let mut last = None;
        let code = eventually("rota to exit", || {
            let r = self.child.try_wait();
            last = Some(format!("{r:?}"));
            async move {
                match r {
                    Ok(Some(status)) => Ok(status.code()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
        let _ = last;
        code
    }
}

impl RotaProcess {
    /// SIGTERM and wait for the exit code. Prefer this to dropping a process
    /// whose connections reach backends of the test's own runtime: `Drop`
    /// blocks that runtime while it waits, so those backends cannot answer
    /// the drain.
    pub async fn stop(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.exit_code().await
    }
}

impl Drop for RotaProcess {
    /// SIGTERM first, so a demo or fabric stops the instances it started;
    /// SIGKILL if it has not exited within ten seconds.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = std::time::Instant::now() + DEADLINE;
            while std::time::Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A fresh folder under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rota-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checks that `text` is well-formed Prometheus text exposition format and
/// returns its samples as (name with labels, value).
pub fn parse_prometheus(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    let mut typed: HashSet<String> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts
                .next()
                .ok_or(format!("line {n}: comment without a metric name"))?;
            if !valid_name(name) {
                return Err(format!("line {n}: bad metric name {name:?}"));
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(format!("line {n}: bad type {t:?}"));
                    }
                    typed.insert(name.to_owned());
                }
                other => return Err(format!("line {n}: unknown comment {other:?}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("line {n}: no value: {line:?}"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .map_err(|_| format!("line {n}: bad value {v:?}"))?,
        };
        let name = series.split('{').next().unwrap_or("");
        if !valid_name(name) {
            return Err(format!("line {n}: bad metric name {name:?}"));
        }
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .ok_or(format!("line {n}: bad label block {labels:?}"))?;
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or(format!("line {n}: bad label {pair:?}"))?;
                    if !valid_name(k) || !v.starts_with('"') {
                        return Err(format!("line {n}: bad label {pair:?}"));
                    }
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        if !typed.contains(family) {
            return Err(format!("line {n}: sample of {name} before its # TYPE line"));
        }
        samples.push((series.to_owned(), value));
    }
    Ok(samples)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

use std::collections::HashSet;

// ----- fabric helpers (tests/fabric.rs) -----

/// [`eventually`] with its own deadline, for states that take several
/// heartbeats or restarts to reach.
pub async fn eventually_within<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) => {
                if tokio::time::Instant::now() >= end {
                    panic!("timed out after {deadline:?} waiting for {what}; last seen: {seen}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request with an optional JSON body; returns status and the body parsed
/// as JSON (`Null` when it is not JSON). Connection errors are `Err`.
pub async fn http_json(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&serde_json::Value>,
) -> io::Result<(u16, serde_json::Value)> {
    let (status, body) = request(method, addr, path, body.map(|b| b.to_string())).await?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Kills every instance a fabric recorded in `<state_dir>/state.json` (each
/// guest agent's whole process group). Agents outlive the fabric by design,
/// so tests must clean up after themselves.
pub fn kill_fabric_instances(state_dir: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(state_dir.join("state.json")) else {
        return;
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    for instance in state["instances"].as_array().into_iter().flatten() {
        if let Some(pid) = instance["agent_pid"].as_u64() {
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// A small HTTP/1.1 backend: `GET /health` answers the status in `health`
/// (200 → "ok"); any other path answers 200 with the backend's name and counts
/// in `served`. Keep-alive is honoured. Stops when dropped.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub health: Arc<std::sync::atomic::AtomicU16>,
    pub served: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl HttpBackend {
    pub async fn start(name: &str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http backend");
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let served = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (h, sv, name) = (health.clone(), served.clone(), name.to_owned());
        accept_until(listener, stop.clone(), move |stream| {
            let (h, sv, name) = (h.clone(), sv.clone(), name.clone());
            async move { serve_http(stream, &name, &h, &sv).await }
        });
        HttpBackend {
            addr,
            health,
            served,
            stop,
        }
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_http(
    stream: TcpStream,
    name: &str,
    health: &std::sync::atomic::AtomicU16,
    served: &AtomicUsize,
) {
    use tokio::io::AsyncBufReadExt;
    let mut s = tokio::io::BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match s.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            match s.read_line(&mut h).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if h.to_ascii_lowercase().starts_with("connection: close") {
                close = true;
            }
            if h == "\r\n" {
                break;
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("/");
        let (status, body) = if path == "/health" {
            let code = health.load(Ordering::SeqCst);
            (
                code,
                if code == 200 {
                    "ok\n".to_owned()
                } else {
                    "not ok\n".to_owned()
                },
            )
        } else {
            served.fetch_add(1, Ordering::SeqCst);
            (200, format!("{name}\n"))
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if s.get_mut().write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// One `GET /` through `addr` on a fresh connection; returns the body, trimmed.
pub async fn who(addr: SocketAddr) -> io::Result<String> {
    let (_, body) = request("GET", addr, "/", None).await?;
    Ok(body.trim().to_owned())
}

/// Waits until the admin API shows `instance` on `endpoint` with `in_rotation == want`.
pub async fn await_rotation(
    admin: SocketAddr,
    endpoint: &str,
    instance: &str,
    want: bool,
) -> serde_json::Value {
    eventually(&format!("{instance} in_rotation={want}"), || async {
        let v = instance_json(admin, endpoint, instance).await;
        if v["in_rotation"] == want {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await
}
