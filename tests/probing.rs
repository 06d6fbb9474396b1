//! Probes driving rotation through the balancer: flips, refusals, the single-instance rule, guest agents.

mod support;

use std::net::SocketAddr;

use rota::membership::Instance;
use rota_probe::{AgentState, AgentStatus};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Fast Azure-style timing for tests: probe every 100 ms, out after 600 ms without success.
const FAST_HTTP_PROBE: &str =
    "[endpoint.probe]\nprotocol = \"http\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"600ms\"\nattempt_timeout = \"80ms\"\n";

async fn rota_over(backends: &[&HttpBackend], extra: &str, probe: &str) -> rota::Rota {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    start_rota(&format!(
        "{}{probe}{}",
        endpoint_toml(extra),
        pool_toml("web", &addrs)
    ))
    .await
}

/// A keep-alive connection through the balancer that happens to land on `want`.
async fn keep_alive_to(addr: SocketAddr, want: &str) -> BufReader<TcpStream> {
    eventually(&format!("a keep-alive connection to {want}"), || async {
        let mut c = BufReader::new(TcpStream::connect(addr).await.map_err(|e| e.to_string())?);
        let got = keep_alive_get(&mut c).await;
        if got == want {
            Ok(c)
        } else {
            Err(format!("landed on {got}"))
        }
    })
    .await
}

async fn keep_alive_get(c: &mut BufReader<TcpStream>) -> String {
    c.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut len = 0;
    loop {
        let mut h = String::new();
        c.read_line(&mut h).await.unwrap();
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if h == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await.unwrap();
    String::from_utf8_lossy(&body).trim().to_owned()
}

#[tokio::test]
async fn a_503_takes_an_instance_out_at_once_and_200_brings_it_back() {
    let (a, b) = (
        HttpBackend::start("web-0").await,
        HttpBackend::start("web-1").await,
    );
    let rota = rota_over(&[&a, &b], "distribution = \"round-robin\"", FAST_HTTP_PROBE).await;
    let (addr, admin) = (rota.endpoint_addr("web").unwrap(), rota.admin_addr());
    let v = await_rotation(admin, "web", "web-0", true).await;
    assert_eq!(v["health"]["probe"], "http");

    // A connection opened while web-0 is healthy must survive every transition.
    let mut open = keep_alive_to(addr, "web-0").await;

    a.set_health(503);
    let v = await_rotation(admin, "web", "web-0", false).await;
    assert_eq!(v["health"]["last_result"], "http 503", "{v}");
    assert_eq!(v["reason"], "http: http 503", "{v}");
    let before = a.served();
    for i in 0..100 {
        assert_eq!(
            who(addr).await.unwrap(),
            "web-1",
            "request {i} while web-0 is out"
        );
    }
    // The only web-0 request allowed now is on the connection opened before.
    assert_eq!(keep_alive_get(&mut open).await, "web-0");
    assert_eq!(
        a.served(),
        before + 1,
        "no new connection reached web-0 while it was out"
    );

    a.set_health(200);
    let v = await_rotation(admin, "web", "web-0", true).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(who(addr).await.unwrap());
    }
    assert!(seen.contains("web-0"), "{seen:?}");
    assert_eq!(
        keep_alive_get(&mut open).await,
        "web-0",
        "old connection survived both flips"
    );

    // Explainable: last success, and the transitions out and back in.
    assert!(
        v["health"]["last_success_unix_ms"].as_u64().unwrap() > 0,
        "{v}"
    );
    let transitions = v["transitions"].as_array().unwrap();
    let flips: Vec<bool> = transitions
        .iter()
        .map(|t| t["in_rotation"].as_bool().unwrap())
        .collect();
    assert!(flips.ends_with(&[false, true]), "{v}");
    let (_, metrics) = http("GET", admin, "/metrics").await;
    let samples = parse_prometheus(&metrics).unwrap();
    let get = |k: &str| samples.iter().find(|(s, _)| s == k).map(|(_, v)| *v);
    assert_eq!(
        get("rota_instance_rotation_transitions_total{endpoint=\"web\",instance=\"web-0\",to=\"out\"}"),
        Some(1.0)
    );
    assert!(
        get("rota_probe_attempts_total{endpoint=\"web\",instance=\"web-0\",result=\"refused\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        metrics.contains("rota_probe_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reset_takes_an_instance_out_without_waiting_for_the_timeout() {
    let (a, b) = (
        HttpBackend::start("web-0").await,
        HttpBackend::start("web-1").await,
    );
    // A 30 s timeout: only a positive refusal can take web-0 out within the test deadline.
    let probe = "[endpoint.probe]\nprotocol = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"30s\"\nattempt_timeout = \"80ms\"\n";
    let rota = rota_over(&[&a, &b], "", probe).await;
    let admin = rota.admin_addr();
    await_rotation(admin, "web", "web-0", true).await;
    drop(a); // the port now refuses connections
    let v = await_rotation(admin, "web", "web-0", false).await;
    assert_eq!(v["health"]["last_result"], "connection refused", "{v}");
}

#[tokio::test]
async fn a_single_probed_instance_stays_in_rotation_and_says_why() {
    let a = HttpBackend::start("web-0").await;
    let rota = rota_over(&[&a], "", FAST_HTTP_PROBE).await;
    let admin = rota.admin_addr();
    a.set_health(500);
    let v = eventually("web-0 to be reported unhealthy", || async {
        let v = instance_json(admin, "web", "web-0").await;
        if v["health"]["state"] == "unhealthy" {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(v["in_rotation"], true, "{v}");
    assert_eq!(
        v["reason"], "single instance, always in rotation (http: http 500)",
        "{v}"
    );
    assert_eq!(
        who(rota.endpoint_addr("web").unwrap()).await.unwrap(),
        "web-0"
    );
}

#[tokio::test]
async fn instances_added_at_run_time_wait_for_their_first_success() {
    let (a, b) = (
        HttpBackend::start("web-0").await,
        HttpBackend::start("web-1").await,
    );
    let late = HttpBackend::start("web-2").await;
    late.set_health(503);
    let rota = rota_over(&[&a, &b], "distribution = \"round-robin\"", FAST_HTTP_PROBE).await;
    let (addr, admin) = (rota.endpoint_addr("web").unwrap(), rota.admin_addr());
    let instance = Instance {
        name: "web-2".into(),
        addr: late.addr,
        weight: 1,
        agent: None,
        own_port: false,
    };
    rota.membership().join("web", &instance, false);
    let v = instance_json(admin, "web", "web-2").await;
    assert_eq!(v["in_rotation"], false, "{v}");
    assert!(
        ["awaiting", "unhealthy"].contains(&v["health"]["state"].as_str().unwrap()),
        "{v}"
    );
    for _ in 0..30 {
        assert_ne!(who(addr).await.unwrap(), "web-2");
    }
    assert_eq!(late.served(), 0);
    late.set_health(200);
    await_rotation(admin, "web", "web-2", true).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..9 {
        seen.insert(who(addr).await.unwrap());
    }
    assert!(seen.contains("web-2"), "{seen:?}");

    // Leaving stops its probe and drains it.
    rota.membership().leave("web", "web-2");
    let eps = endpoints_json(admin).await;
    let names: Vec<&str> = eps["endpoints"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web-0", "web-1"]);
}

/// A guest agent answering with a state the test controls.
async fn agent(state: std::sync::Arc<std::sync::Mutex<AgentState>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let state = *state.lock().unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = serde_json::to_string(&AgentStatus::new(state)).unwrap();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn without_a_load_balancer_probe_the_guest_agent_decides() {
    let (a, b) = (
        HttpBackend::start("web-0").await,
        HttpBackend::start("web-1").await,
    );
    let state = std::sync::Arc::new(std::sync::Mutex::new(AgentState::Ready));
    let agent_addr = agent(state.clone()).await;
    let other_agent = agent(std::sync::Arc::new(std::sync::Mutex::new(
        AgentState::Ready,
    )))
    .await;
    let probe = "[endpoint.probe]\nprotocol = \"guest-agent\"\ninterval = \"100ms\"\ntimeout = \"600ms\"\nattempt_timeout = \"80ms\"\n";
    let toml = format!(
        "{}{probe}[[pool]]\nname = \"web\"\n[[pool.backend]]\nname = \"web-0\"\naddress = \"{}\"\nagent = \"{agent_addr}\"\n[[pool.backend]]\nname = \"web-1\"\naddress = \"{}\"\nagent = \"{other_agent}\"\n",
        endpoint_toml(""),
        a.addr,
        b.addr
    );
    let rota = start_rota(&toml).await;
    let admin = rota.admin_addr();
    let v = await_rotation(admin, "web", "web-0", true).await;
    assert_eq!(v["health"]["probe"], "guest-agent", "{v}");
    for (s, text) in [
        (AgentState::Busy, "agent: Busy"),
        (AgentState::Stopping, "agent: Stopping"),
    ] {
        *state.lock().unwrap() = s;
        let v = await_rotation(admin, "web", "web-0", false).await;
        assert_eq!(v["health"]["last_result"], text, "{v}");
        *state.lock().unwrap() = AgentState::Ready;
        await_rotation(admin, "web", "web-0", true).await;
    }
}
