//! Rotation end to end: draining, the single-instance rule, all-down refusal, distribution modes.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn greeters(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(Behaviour::Greet(format!("web-{i}"))).await);
    }
    v
}

async fn rota_over(backends: &[Backend], extra: &str) -> rota::Rota {
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    start_rota_over(extra, &addrs).await
}

#[tokio::test]
async fn draining_keeps_the_open_connection_and_steers_new_ones_away() {
    let backends = greeters(2).await;
    let rota = rota_over(&backends, "distribution = \"round-robin\"").await;
    let addr = rota.endpoint_addr("web").unwrap();
    let admin = rota.admin_addr();

    let (victim, mut open) = greeted(addr).await.unwrap();
    let (status, body) = http(
        "POST",
        admin,
        &format!("/api/v1/endpoints/web/instances/{victim}/drain"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view = instance_json(admin, "web", &victim).await;
    assert_eq!(view["in_rotation"], false, "{view}");
    assert_eq!(view["active_connections"], 1, "{view}");
    assert_eq!(view["reason"], "drained by operator", "{view}");

    for i in 0..30 {
        let (line, _s) = greeted(addr).await.unwrap();
        assert_ne!(
            line, victim,
            "new connection {i} reached the drained instance"
        );
    }
    // The connection that was open before the drain still flows both ways.
    open.write_all(b"still here\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "still here");

    let (status, _) = http(
        "POST",
        admin,
        &format!("/api/v1/endpoints/web/instances/{victim}/enable"),
    )
    .await;
    assert_eq!(status, 200);
    let mut seen = HashSet::new();
    for _ in 0..10 {
        seen.insert(greeted(addr).await.unwrap().0);
    }
    assert!(
        seen.contains(&victim),
        "re-enabled instance gets connections again: {seen:?}"
    );
}

#[tokio::test]
async fn a_single_instance_pool_stays_in_rotation_when_drained() {
    let backends = greeters(1).await;
    let rota = rota_over(&backends, "").await;
    let admin = rota.admin_addr();
    let (status, _) = http("POST", admin, "/api/v1/endpoints/web/instances/web-0/drain").await;
    assert_eq!(status, 200);
    let view = instance_json(admin, "web", "web-0").await;
    assert_eq!(view["in_rotation"], true, "{view}");
    assert_eq!(view["admin"], "drained", "{view}");
    assert!(
        view["reason"].as_str().unwrap().contains("single instance"),
        "{view}"
    );
    for _ in 0..5 {
        let (line, _s) = greeted(rota.endpoint_addr("web").unwrap()).await.unwrap();
        assert_eq!(line, "web-0");
    }
}

#[tokio::test]
async fn all_down_refuses_new_connections_at_once_and_counts_them() {
    let backends = greeters(2).await;
    let rota = rota_over(&backends, "").await;
    let admin = rota.admin_addr();
    let addr = rota.endpoint_addr("web").unwrap();
    for name in ["web-0", "web-1"] {
        let (status, _) = http("POST", admin, &format!("/api/v1/instances/{name}/drain")).await;
        assert_eq!(status, 200);
    }
    for _ in 0..5 {
        // The reset can land before connect() returns on loopback; either way
        // the client is refused without waiting for any timeout.
        match tokio::net::TcpStream::connect(addr).await {
            Ok(mut s) => {
                let mut buf = [0u8; 8];
                let r = tokio::time::timeout(DEADLINE, s.read(&mut buf))
                    .await
                    .expect("refused promptly");
                assert!(
                    matches!(r, Ok(0) | Err(_)),
                    "expected a reset or end of stream, got {r:?}"
                );
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    assert_eq!(
        backends[0].accepted() + backends[1].accepted(),
        0,
        "no instance was reached"
    );
    let (_, metrics) = http("GET", admin, "/metrics").await;
    assert!(
        metrics.contains("rota_endpoint_connections_refused_total{endpoint=\"web\",reason=\"no_instance_in_rotation\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn fail_open_spreads_over_every_instance_when_none_is_in_rotation() {
    let backends = greeters(2).await;
    let rota = rota_over(
        &backends,
        "all_down = \"fail-open\"\ndistribution = \"round-robin\"",
    )
    .await;
    let admin = rota.admin_addr();
    for name in ["web-0", "web-1"] {
        http("POST", admin, &format!("/api/v1/instances/{name}/drain")).await;
    }
    let mut seen = HashSet::new();
    for _ in 0..10 {
        seen.insert(greeted(rota.endpoint_addr("web").unwrap()).await.unwrap().0);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let eps = endpoints_json(admin).await;
    assert_eq!(eps["endpoints"][0]["failing_open"], true, "{eps}");
}

#[tokio::test]
async fn every_distribution_mode_spreads_over_all_instances() {
    let backends = greeters(3).await;
    for mode in [
        "five-tuple",
        "source-ip",
        "source-ip-protocol",
        "round-robin",
        "least-connections",
    ] {
        let rota = rota_over(&backends, &format!("distribution = \"{mode}\"")).await;
        let addr = rota.endpoint_addr("web").unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        // Source-IP modes hash the client address, so clients come from many
        // loopback addresses (all of 127.0.0.0/8 is local on Linux).
        for i in 0..90u8 {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1 + i / 200, 1 + i));
            let line = greeted_from(source, addr).await.unwrap();
            *counts.entry(line).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{mode}: {counts:?}");
        for (name, n) in &counts {
            assert!(*n >= 10, "{mode}: {name} got only {n} of 90: {counts:?}");
        }
        rota.shutdown_within(std::time::Duration::ZERO).await;
    }
}

#[tokio::test]
async fn source_ip_affinity_sends_one_client_to_one_instance() {
    let backends = greeters(3).await;
    for mode in ["source-ip", "source-ip-protocol"] {
        let rota = rota_over(&backends, &format!("distribution = \"{mode}\"")).await;
        let addr = rota.endpoint_addr("web").unwrap();
        let mut seen = HashSet::new();
        for _ in 0..20 {
            seen.insert(
                greeted_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), addr)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(seen.len(), 1, "{mode}: {seen:?}");
        rota.shutdown_within(std::time::Duration::ZERO).await;
    }
}

#[tokio::test]
async fn an_instance_that_leaves_is_drained_not_cut() {
    let backends = greeters(2).await;
    let rota = rota_over(&backends, "distribution = \"round-robin\"").await;
    let (addr, admin) = (rota.endpoint_addr("web").unwrap(), rota.admin_addr());
    let (victim, mut open) = greeted(addr).await.unwrap();

    rota.membership().leave("web", &victim);
    let eps = endpoints_json(admin).await;
    let ep = &eps["endpoints"][0];
    let names: Vec<&str> = ep["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&victim.as_str()), "{ep}");
    assert_eq!(ep["leaving"][0]["name"], victim.as_str(), "{ep}");
    assert_eq!(ep["leaving"][0]["active_connections"], 1, "{ep}");

    for i in 0..20 {
        let (line, _s) = greeted(addr).await.unwrap();
        assert_ne!(
            line, victim,
            "new connection {i} reached the instance that left"
        );
    }
    // The connection it carried still flows both ways, then closes normally.
    open.write_all(b"after leave\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "after leave");
    drop(open);
    eventually(
        "the leaving instance to be forgotten once its connection closed",
        || async {
            let eps = endpoints_json(admin).await;
            let leaving = eps["endpoints"][0]["leaving"].as_array().unwrap().len();
            if leaving == 0 {
                Ok(())
            } else {
                Err(eps.to_string())
            }
        },
    )
    .await;
}
