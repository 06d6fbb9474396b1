//! `/metrics` after real traffic, and the admin API's answers to bad requests.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn metrics_count_traffic_and_parse_as_prometheus_text() {
    let echo = Backend::start(Behaviour::Echo).await;
    let rota = start_rota_over("", &[echo.addr]).await;
    let addr = rota.endpoint_addr("web").unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[7u8; 1000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), 1000);
    }
    // Counters land as the connection tasks finish; poll for the final values.
    let samples = eventually("the three connections to be counted", || async {
        let (status, text) = http("GET", rota.admin_addr(), "/metrics").await;
        assert_eq!(status, 200);
        let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |k: &str| samples.iter().find(|(s, _)| s == k).map(|(_, v)| *v);
        if get("rota_endpoint_connections_active{endpoint=\"web\"}") == Some(0.0) {
            Ok(samples)
        } else {
            Err(text)
        }
    })
    .await;
    let get = |k: &str| {
        samples
            .iter()
            .find(|(s, _)| s == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {k}"))
    };
    let inst = "endpoint=\"web\",instance=\"web-0\"";
    assert_eq!(
        get("rota_endpoint_connections_accepted_total{endpoint=\"web\"}"),
        3.0
    );
    assert_eq!(
        get(&format!("rota_instance_connections_total{{{inst}}}")),
        3.0
    );
    assert_eq!(
        get(&format!("rota_instance_connections_active{{{inst}}}")),
        0.0
    );
    assert_eq!(
        get(&format!("rota_instance_sent_bytes_total{{{inst}}}")),
        3000.0
    );
    assert_eq!(
        get(&format!("rota_instance_received_bytes_total{{{inst}}}")),
        3000.0
    );
    assert_eq!(get(&format!("rota_instance_in_rotation{{{inst}}}")), 1.0);
    assert_eq!(
        get(&format!(
            "rota_instance_connect_duration_seconds_count{{{inst}}}"
        )),
        3.0
    );
    assert_eq!(
        get(&format!("rota_instance_connect_failures_total{{{inst}}}")),
        0.0
    );
}

#[tokio::test]
async fn admin_api_names_what_it_cannot_find() {
    let echo = Backend::start(Behaviour::Echo).await;
    let rota = start_rota_over("", &[echo.addr]).await;
    let admin = rota.admin_addr();
    let (status, body) = http("POST", admin, "/api/v1/endpoints/web/instances/nope/drain").await;
    assert_eq!(status, 404);
    assert!(body.contains("no instance named \\\"nope\\\""), "{body}");
    let (status, body) = http(
        "POST",
        admin,
        "/api/v1/endpoints/nope/instances/web-0/drain",
    )
    .await;
    assert_eq!(status, 404);
    assert!(body.contains("no endpoint named"), "{body}");
    let (status, body) = http("POST", admin, "/api/v1/instances/web-0/explode").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("expected \\\"drain\\\" or \\\"enable\\\""),
        "{body}"
    );
    let (status, body) = http("GET", admin, "/api/v1/endpoints/web").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instances"][0]["name"], "web-0");
    assert_eq!(v["instances"][0]["address"], echo.addr.to_string());
    assert_eq!(v["instances"][0]["health"]["state"], "unprobed");
}
