//! Real-socket tests of every probe kind, hostile peers included, on 127.0.0.1:0.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rota_config::{ProbeConfig, ProbeProtocol, TlsConfig};
use rota_probe::{AgentState, AgentStatus, Outcome, ProbeSpec, Prober, Report, Target, TargetKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, UnboundedReceiver};

const INTERVAL: Duration = Duration::from_millis(80);
const TIMEOUT: Duration = Duration::from_millis(300);
const ATTEMPT: Duration = Duration::from_millis(60);
/// Generous bound for "it happened": waits end as soon as it does.
const PATIENCE: Duration = Duration::from_secs(5);

fn config(protocol: ProbeProtocol) -> ProbeConfig {
    ProbeConfig {
        protocol,
        port: None,
        path: "/healthz".into(),
        interval: INTERVAL,
        timeout: TIMEOUT,
        attempt_timeout: ATTEMPT,
        rise: 1,
        fall: None,
        tls: TlsConfig::default(),
    }
}

fn spec(protocol: ProbeProtocol) -> Arc<ProbeSpec> {
    Arc::new(ProbeSpec::from_config(&config(protocol)).expect("spec"))
}

struct Harness {
    prober: Prober,
    rx: UnboundedReceiver<Report>,
    registry: prometheus::Registry,
}

impl Harness {
    fn new() -> Harness {
        let (tx, rx) = mpsc::unbounded_channel();
        let registry = prometheus::Registry::new();
        let prober = Prober::new(tx, &registry).expect("prober");
        Harness {
            prober,
            rx,
            registry,
        }
    }

    fn add(&self, instance: &str, addr: SocketAddr, spec: &Arc<ProbeSpec>) -> TargetKey {
        let key = TargetKey::new("web", instance);
        self.prober.add(Target {
            key: key.clone(),
            addr,
            spec: spec.clone(),
        });
        key
    }

    /// Waits for a report matching `pred`, failing with what was seen instead.
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Report) -> bool) -> Report {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) if pred(&r) => return r,
                Ok(Some(r)) => {
                    if seen.len() == 30 {
                        seen.remove(0);
                    }
                    seen.push(format!(
                        "{} healthy={} changed={} {:?} ({:?})",
                        r.key, r.healthy, r.changed, r.outcome, r.duration
                    ));
                }
                Ok(None) => panic!("report channel closed while waiting for {what}"),
                Err(_) => panic!("no report for {what} within {PATIENCE:?}; last seen: {seen:#?}"),
            }
        }
    }

    /// The next report of `key`.
    async fn next_of(&mut self, key: &TargetKey) -> Report {
        let k = key.clone();
        self.wait_for(&format!("a report of {key}"), move |r| r.key == k)
            .await
    }
}

/// Accepts connections forever, handing each to `on_conn` in its own task.
async fn serve<F, Fut>(on_conn: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(on_conn(stream));
        }
    });
    addr
}

/// Reads a request head (bounded) and returns it.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn response(status: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An http server whose status the test flips; it also checks what the probe sends.
async fn status_server(status: Arc<AtomicU16>) -> SocketAddr {
    serve(move |mut s| {
        let status = status.clone();
        async move {
            let head = read_head(&mut s).await;
            let ok = head.starts_with("GET /healthz HTTP/1.1\r\n")
                && head.to_ascii_lowercase().contains("connection: close")
                && head.to_ascii_lowercase().contains("host: 127.0.0.1:");
            let code = if ok {
                status.load(Ordering::SeqCst)
            } else {
                400
            };
            let _ = s.write_all(response(code, "ok").as_bytes()).await;
        }
    })
    .await
}

/// A port nothing listens on: bind, note, drop.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn http_flips_at_once_on_503_and_back_on_200() {
    let status = Arc::new(AtomicU16::new(200));
    let addr = status_server(status.clone()).await;
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec(ProbeProtocol::Http));

    let r = h.wait_for("healthy", |r| r.healthy).await;
    assert!(r.changed);
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.reason, "http 200");
    assert_eq!(r.kind, "http");
    assert!(r.last_success.is_some());

    status.store(503, Ordering::SeqCst);
    // The very first 503 takes it out: no waiting for the timeout.
    let r = h.wait_for("a 503", |r| r.reason == "http 503").await;
    assert!(!r.healthy && r.changed, "{r:?}");
    assert_eq!(r.outcome, Outcome::Refused("http 503".into()));

    status.store(200, Ordering::SeqCst);
    let r = h.wait_for("a 200 again", |r| r.reason == "http 200").await;
    assert!(r.healthy && r.changed, "{r:?}");
    let r = h.next_of(&key).await;
    assert!(r.healthy && !r.changed, "{r:?}");
}

#[tokio::test]
async fn reset_is_an_immediate_refusal() {
    let addr = serve(|s| async move {
        // SO_LINGER 0: closing sends RST instead of FIN.
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .await;
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec(ProbeProtocol::Http));
    let r = h.next_of(&key).await;
    assert_eq!(
        r.outcome,
        Outcome::Refused("connection reset".into()),
        "{r:?}"
    );
    assert!(!r.healthy);
}

#[tokio::test]
async fn black_hole_times_out_and_leaves_only_after_timeout() {
    // Answers 200 until told to black-hole, then accepts and never answers.
    let hole = Arc::new(AtomicU8::new(0));
    let flag = hole.clone();
    let addr = serve(move |mut s| {
        let flag = flag.clone();
        async move {
            let _ = read_head(&mut s).await;
            if flag.load(Ordering::SeqCst) == 0 {
                let _ = s.write_all(response(200, "ok").as_bytes()).await;
            } else {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    })
    .await;
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec(ProbeProtocol::Http));
    h.wait_for("healthy", |r| r.healthy).await;

    hole.store(1, Ordering::SeqCst);
    // The last success before the hole opened (an attempt may already be in flight).
    let mut last_ok = Instant::now();
    let mut timeouts_while_healthy = 0;
    let flipped = loop {
        let r = h.next_of(&key).await;
        match &r.outcome {
            Outcome::Success => last_ok = Instant::now(),
            Outcome::Failed(reason) if r.healthy => {
                assert_eq!(reason, "timeout after 60ms");
                assert!(!r.changed);
                // Each attempt ends at its own deadline, not later.
                assert!(r.duration >= ATTEMPT && r.duration < ATTEMPT * 3, "{r:?}");
                timeouts_while_healthy += 1;
            }
            _ => break r,
        }
    };
    let waited = last_ok.elapsed();
    assert!(!flipped.healthy && flipped.changed, "{flipped:?}");
    assert!(
        matches!(&flipped.outcome, Outcome::Failed(r) if r == "no successful probe for 300ms" || r.starts_with("timeout after")),
        "{flipped:?}"
    );
    assert!(
        timeouts_while_healthy >= 2,
        "left after {timeouts_while_healthy} timeouts"
    );
    // Not before the timeout (small slack for report delivery), and not much after.
    assert!(
        waited + Duration::from_millis(25) >= TIMEOUT,
        "left after {waited:?}"
    );
    assert!(waited < TIMEOUT + INTERVAL * 5, "left after {waited:?}");

    // Attempts keep failing by their deadline while out of rotation.
    let r = h.next_of(&key).await;
    assert_eq!(r.outcome, Outcome::Failed("timeout after 60ms".into()));
    assert!(!r.healthy && !r.changed);
}

/// Probes a server that behaves as `on_conn` once, and returns the first report.
async fn first_report_against<F, Fut>(protocol: ProbeProtocol, on_conn: F) -> Report
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = serve(on_conn).await;
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec(protocol));
    let r = h.next_of(&key).await;
    // Whatever the peer does, the attempt ends by its deadline (plus scheduling slack).
    assert!(r.duration < ATTEMPT + Duration::from_millis(250), "{r:?}");
    r
}

fn assert_failed(r: &Report, want: impl Fn(&str) -> bool) {
    match &r.outcome {
        Outcome::Failed(reason) if want(reason) => assert_eq!(reason, &r.reason),
        _ => panic!("unexpected report {r:?}"),
    }
    assert!(!r.healthy);
}

#[tokio::test]
async fn hostile_never_answers() {
    let r = first_report_against(ProbeProtocol::Http, |mut s| async move {
        let _ = read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    assert_failed(&r, |reason| reason == "timeout after 60ms");
}

#[tokio::test]
async fn hostile_one_byte_a_second() {
    let r = first_report_against(ProbeProtocol::Http, |mut s| async move {
        let _ = read_head(&mut s).await;
        for b in response(200, "ok").bytes() {
            if s.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert_failed(&r, |reason| reason == "timeout after 60ms");
}

/// Writes `head`, then `len` filler bytes in 64 KiB chunks, as fast as the
/// probe reads; false when the probe hung up first.
async fn head_then_filler(s: &mut TcpStream, head: &[u8], len: usize) -> bool {
    if s.write_all(head).await.is_err() {
        return false;
    }
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        if s.write_all(&chunk).await.is_err() {
            return false;
        }
        sent += chunk.len();
    }
    true
}

/// Writes a status line, then `len` bytes of one header.
async fn huge_header(mut s: TcpStream, len: usize) {
    let _ = read_head(&mut s).await;
    if head_then_filler(&mut s, b"HTTP/1.1 200 OK\r\nX-Filler: ", len).await {
        let _ = s.write_all(b"\r\nContent-Length: 0\r\n\r\n").await;
    }
}

#[tokio::test]
async fn hostile_huge_header() {
    let r = first_report_against(ProbeProtocol::Http, |s| huge_header(s, 1 << 20)).await;
    assert_failed(&r, |reason| reason == "response too large");
}

#[tokio::test]
async fn hostile_huge_body_is_not_read_by_http() {
    // An http probe only needs the status: a 10 MiB body does not matter.
    let r = first_report_against(ProbeProtocol::Http, |mut s| async move {
        let _ = read_head(&mut s).await;
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 10485760\r\n\r\n";
        head_then_filler(&mut s, head, 10 << 20).await;
    })
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
}

#[tokio::test]
async fn hostile_huge_body_to_guest_agent() {
    let r = first_report_against(ProbeProtocol::GuestAgent, |mut s| async move {
        let _ = read_head(&mut s).await;
        let head =
            b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n{\"state\":\"Ready\",\"detail\":\"";
        head_then_filler(&mut s, head, 1 << 20).await;
    })
    .await;
    assert_failed(&r, |reason| reason == "response too large");
}

#[tokio::test]
async fn hostile_garbage() {
    let r = first_report_against(ProbeProtocol::Http, |mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await;
    })
    .await;
    assert_failed(&r, |reason| reason.starts_with("garbage response: "));
}

#[tokio::test]
async fn hostile_closes_early() {
    let r = first_report_against(ProbeProtocol::Http, |mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 O").await;
        let _ = s.shutdown().await;
    })
    .await;
    assert_failed(&r, |reason| reason == "connection closed before response");
}

#[tokio::test]
async fn hostile_closes_without_a_word() {
    let r = first_report_against(ProbeProtocol::Http, |mut s| async move {
        let _ = read_head(&mut s).await;
        let _ = s.shutdown().await;
    })
    .await;
    assert_failed(&r, |reason| reason == "connection closed before response");
}

/// A guest agent the test steers: a state, or garbage.
async fn agent_server(state: Arc<AtomicU8>) -> SocketAddr {
    serve(move |mut s| {
        let state = state.clone();
        async move {
            let head = read_head(&mut s).await;
            let wanted = format!("GET {} HTTP/1.1\r\n", rota_probe::STATUS_PATH);
            let answer = if !head.starts_with(&wanted) {
                response(404, "")
            } else {
                match AgentState::ALL.get(state.load(Ordering::SeqCst) as usize) {
                    Some(st) => {
                        let mut status = AgentStatus::new(*st);
                        status.instance = Some("web-0".into());
                        status.since = Some("2024-05-01T12:00:00Z".into());
                        response(200, &serde_json::to_string(&status).unwrap())
                    }
                    None => response(200, "<html>definitely not json</html>"),
                }
            };
            let _ = s.write_all(answer.as_bytes()).await;
        }
    })
    .await
}

fn state_index(s: AgentState) -> u8 {
    AgentState::ALL.iter().position(|x| *x == s).unwrap() as u8
}

#[tokio::test]
async fn guest_agent_states() {
    let state = Arc::new(AtomicU8::new(state_index(AgentState::Ready)));
    let addr = agent_server(state.clone()).await;
    let mut h = Harness::new();
    h.add("web-0", addr, &spec(ProbeProtocol::GuestAgent));

    let r = h.wait_for("Ready", |r| r.healthy).await;
    assert_eq!(r.reason, "agent: Ready");
    assert_eq!(r.kind, "guest-agent");

    state.store(state_index(AgentState::Busy), Ordering::SeqCst);
    let r = h.wait_for("Busy", |r| r.reason == "agent: Busy").await;
    assert_eq!(r.outcome, Outcome::Refused("agent: Busy".into()));
    assert!(!r.healthy && r.changed);

    state.store(state_index(AgentState::Ready), Ordering::SeqCst);
    h.wait_for("Ready again", |r| r.healthy).await;

    state.store(state_index(AgentState::Stopping), Ordering::SeqCst);
    let r = h
        .wait_for("Stopping", |r| r.reason == "agent: Stopping")
        .await;
    assert_eq!(r.outcome, Outcome::Refused("agent: Stopping".into()));
    assert!(!r.healthy && r.changed);

    state.store(u8::MAX, Ordering::SeqCst);
    let r = h
        .wait_for("garbage", |r| matches!(r.outcome, Outcome::Failed(_)))
        .await;
    assert!(r.reason.starts_with("agent: garbage"), "{r:?}");
    assert!(!r.healthy);
}

#[tokio::test]
async fn tcp_accepted_is_healthy_and_closed_port_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let closed = closed_port().await;
    let mut h = Harness::new();
    let tcp = spec(ProbeProtocol::Tcp);
    let open_key = h.add("open", open, &tcp);
    let closed_key = h.add("closed", closed, &tcp);

    let k = open_key.clone();
    let r = h.wait_for("open port", move |r| r.key == k).await;
    assert!(r.healthy && r.changed, "{r:?}");
    assert_eq!((r.reason.as_str(), r.kind), ("connected", "tcp"));

    let k = closed_key.clone();
    let r = h.wait_for("closed port", move |r| r.key == k).await;
    assert_eq!(r.outcome, Outcome::Refused("connection refused".into()));
    assert!(!r.healthy);
}

#[tokio::test]
async fn one_black_hole_does_not_delay_49_others() {
    let status = Arc::new(AtomicU16::new(200));
    let good = status_server(status).await;
    let hole = serve(|mut s| async move {
        let _ = read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    // A long attempt deadline makes the black hole as slow as it may be.
    let mut cfg = config(ProbeProtocol::Http);
    cfg.interval = Duration::from_millis(200);
    cfg.attempt_timeout = Duration::from_millis(190);
    cfg.timeout = Duration::from_secs(2);
    let spec = Arc::new(ProbeSpec::from_config(&cfg).unwrap());

    let mut h = Harness::new();
    let started = Instant::now();
    let hole_key = h.add("hole", hole, &spec);
    let mut pending: std::collections::HashSet<TargetKey> = (0..49)
        .map(|i| h.add(&format!("web-{i}"), good, &spec))
        .collect();
    assert_eq!(h.prober.len(), 50);

    let mut hole_timeouts = 0;
    let mut others = Vec::new();
    let give_up = tokio::time::Instant::now() + PATIENCE;
    while !pending.is_empty() {
        let r = match tokio::time::timeout_at(give_up, h.rx.recv()).await {
            Ok(Some(r)) => r,
            _ => panic!(
                "{} of 49 still not healthy after {PATIENCE:?}; other reports: {others:#?}",
                pending.len()
            ),
        };
        if r.key == hole_key {
            assert_eq!(r.outcome, Outcome::Failed("timeout after 190ms".into()));
            hole_timeouts += 1;
        } else if r.healthy {
            pending.remove(&r.key);
        } else {
            others.push(format!("{}: {}", r.key, r.reason));
        }
    }
    let all_in = started.elapsed();
    // Each starts within one interval (jitter) and answers in about a millisecond;
    // the bound leaves room for a loaded machine.
    assert!(
        all_in < Duration::from_millis(200) * 5,
        "49 healthy only after {all_in:?}"
    );
    // The black hole was timing out meanwhile, at most once per interval.
    assert!(hole_timeouts <= 5, "{hole_timeouts}");
}

#[tokio::test]
async fn metrics_are_resolved_per_target_and_removed_with_it() {
    let status = Arc::new(AtomicU16::new(200));
    let addr = status_server(status.clone()).await;
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec(ProbeProtocol::Http));
    h.wait_for("healthy", |r| r.healthy).await;
    status.store(503, Ordering::SeqCst);
    h.wait_for("refused", |r| !r.healthy).await;

    let text = gather(&h.registry);
    for want in [
        r#"rota_probe_attempts_total{endpoint="web",instance="web-0",result="success"}"#,
        r#"rota_probe_attempts_total{endpoint="web",instance="web-0",result="refused"}"#,
        r#"rota_probe_transitions_total{endpoint="web",instance="web-0",to="healthy"} 1"#,
        r#"rota_probe_transitions_total{endpoint="web",instance="web-0",to="unhealthy"} 1"#,
        r#"rota_probe_duration_seconds_bucket{endpoint="web",le="0.001"}"#,
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }

    h.prober.remove(&key);
    assert!(h.prober.is_empty());
    let text = gather(&h.registry);
    assert!(!text.contains("instance=\"web-0\""), "{text}");
    assert!(!text.contains("endpoint=\"web\""), "{text}");
}

fn gather(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn removed_targets_stop_reporting() {
    let status = Arc::new(AtomicU16::new(200));
    let addr = status_server(status).await;
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec(ProbeProtocol::Http));
    h.next_of(&key).await;
    h.prober.remove(&key);
    // At most one report already on its way; then silence for several intervals.
    let mut after = 0;
    let quiet_until = tokio::time::Instant::now() + INTERVAL * 4;
    while let Ok(Some(_)) = tokio::time::timeout_at(quiet_until, h.rx.recv()).await {
        after += 1;
    }
    assert!(after <= 1, "{after} reports after remove");
}

// ---- https ----------------------------------------------------------------------------

/// A unique scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("rota-probe-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An https server presenting `cert`, answering 200 to anything.
async fn tls_server(cert: &rcgen::CertifiedKey) -> SocketAddr {
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let _ = read_head(&mut tls).await;
            let _ = tls.write_all(response(200, "ok").as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await
}

fn self_signed(names: &[&str]) -> rcgen::CertifiedKey {
    rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap()
}

async fn https_first_report(addr: SocketAddr, tls: TlsConfig) -> Report {
    let mut cfg = config(ProbeProtocol::Https);
    // TLS handshakes in a debug build are slower than a plain GET.
    cfg.interval = Duration::from_millis(400);
    cfg.attempt_timeout = Duration::from_millis(350);
    cfg.timeout = Duration::from_secs(2);
    cfg.tls = tls;
    let spec = Arc::new(ProbeSpec::from_config(&cfg).unwrap());
    let mut h = Harness::new();
    let key = h.add("web-0", addr, &spec);
    h.next_of(&key).await
}

#[tokio::test]
async fn https_self_signed_needs_its_ca() {
    let cert = self_signed(&["127.0.0.1", "web.test"]);
    let addr = tls_server(&cert).await;

    // Bundled web roots do not know it.
    let r = https_first_report(addr, TlsConfig::default()).await;
    assert_eq!(r.outcome, Outcome::Failed("tls: unknown issuer".into()));

    let dir = TempDir::new("https");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let with_ca = TlsConfig {
        ca_file: Some(ca.clone()),
        ..TlsConfig::default()
    };

    // Trusted, verified against the instance IP.
    let r = https_first_report(addr, with_ca.clone()).await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
    assert_eq!((r.reason.as_str(), r.kind), ("http 200", "https"));

    // Trusted, verified against a configured name it carries.
    let r = https_first_report(
        addr,
        TlsConfig {
            server_name: Some("web.test".into()),
            ..with_ca.clone()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");

    // Trusted but for another name.
    let r = https_first_report(
        addr,
        TlsConfig {
            server_name: Some("other.test".into()),
            ..with_ca
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failed("tls: name mismatch".into()));

    // insecure_skip_verify accepts it without any CA.
    let r = https_first_report(
        addr,
        TlsConfig {
            insecure_skip_verify: true,
            ..TlsConfig::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{r:?}");
}

#[tokio::test]
async fn https_expired_certificate() {
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2001, 1, 1);
    params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key_pair).unwrap();
    let certified = rcgen::CertifiedKey { cert, key_pair };
    let addr = tls_server(&certified).await;

    let dir = TempDir::new("expired");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let r = https_first_report(
        addr,
        TlsConfig {
            ca_file: Some(ca),
            ..TlsConfig::default()
        },
    )
    .await;
    assert_eq!(
        r.outcome,
        Outcome::Failed("tls: certificate expired".into())
    );
}

#[tokio::test]
async fn https_probe_of_a_plain_http_server() {
    // Answers in plain HTTP at once, whatever the client sends.
    let addr = serve(|mut s| async move {
        let _ = s.write_all(response(400, "").as_bytes()).await;
    })
    .await;
    let r = https_first_report(
        addr,
        TlsConfig {
            insecure_skip_verify: true,
            ..TlsConfig::default()
        },
    )
    .await;
    assert!(
        matches!(&r.outcome, Outcome::Failed(reason) if reason.starts_with("tls: ")),
        "{r:?}"
    );
}
