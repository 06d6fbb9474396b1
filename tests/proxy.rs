//! The data plane end to end over real loopback sockets: bytes, half-close, retries, idle timeout.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A cheap deterministic byte stream and its checksum, so both ends agree on what was sent.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn one_backend_rota(backend: SocketAddr, extra: &str) -> rota::Rota {
    start_rota_over(extra, &[backend]).await
}

#[tokio::test]
async fn several_mib_both_ways_arrive_byte_exact() {
    let echo = Backend::start(Behaviour::Echo).await;
    let rota = one_backend_rota(echo.addr, "").await;
    let addr = rota.endpoint_addr("web").unwrap();

    let payload = pattern(8 * 1024 * 1024, 7);
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let to_send = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_send).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(payload.len());
    tokio::time::timeout(DEADLINE, rd.read_to_end(&mut back))
        .await
        .expect("echo completes")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len(), "echoed length");
    assert_eq!(checksum(&back), checksum(&payload), "echoed bytes differ");
}

#[tokio::test]
async fn client_half_close_still_gets_the_reply() {
    let counter = Backend::start(Behaviour::CountThenReply).await;
    let rota = one_backend_rota(counter.addr, "").await;
    let mut s = TcpStream::connect(rota.endpoint_addr("web").unwrap())
        .await
        .unwrap();
    let body = pattern(3 * 1024 * 1024 + 17, 3);
    s.write_all(&body).await.unwrap();
    // Client is done sending; the instance only answers after end of stream.
    s.shutdown().await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut reply))
        .await
        .expect("reply")
        .unwrap();
    assert_eq!(reply, format!("got {}\n", body.len()));
}

#[tokio::test]
async fn server_half_close_still_carries_the_client_bytes() {
    let speaker = Backend::start(Behaviour::SpeakThenListen(b"banner then silence".to_vec())).await;
    let rota = one_backend_rota(speaker.addr, "").await;
    let mut s = TcpStream::connect(rota.endpoint_addr("web").unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    // The instance shut down its side: the client sees end of stream...
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("eof")
        .unwrap();
    assert_eq!(got, b"banner then silence");
    // ...and can still send; the instance hears every byte.
    let more = pattern(1024 * 1024, 9);
    s.write_all(&more).await.unwrap();
    s.shutdown().await.unwrap();
    let heard = eventually("the instance to count the client's bytes", || async {
        let h = speaker.heard.lock().unwrap().clone();
        if h.is_empty() {
            Err(format!("{h:?}"))
        } else {
            Ok(h)
        }
    })
    .await;
    assert_eq!(heard, vec![more.len()]);
}

#[tokio::test]
async fn a_server_that_speaks_first_is_heard() {
    let greeter = Backend::start(Behaviour::Greet("hello-first".into())).await;
    let rota = one_backend_rota(greeter.addr, "").await;
    let (line, _s) = greeted(rota.endpoint_addr("web").unwrap()).await.unwrap();
    assert_eq!(line, "hello-first");
}

#[tokio::test]
async fn a_refused_instance_is_skipped_for_the_next_one() {
    let live = Backend::start(Behaviour::Greet("live".into())).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
        // dropped here: connecting to it is refused
    };
    let rota = start_rota_over(
        "distribution = \"round-robin\"\nconnect_attempts = 2\nconnect_timeout = \"1s\"",
        &[dead, live.addr],
    )
    .await;
    let addr = rota.endpoint_addr("web").unwrap();
    for i in 0..20 {
        let (line, _s) = greeted(addr)
            .await
            .unwrap_or_else(|e| panic!("connection {i} failed: {e}"));
        assert_eq!(line, "live");
    }
    let (_, metrics) = http("GET", rota.admin_addr(), "/metrics").await;
    let failures = metrics
        .lines()
        .find(|l| {
            l.starts_with("rota_instance_connect_failures_total")
                && l.contains("instance=\"web-0\"")
        })
        .unwrap_or_else(|| panic!("no connect failure series for web-0 in\n{metrics}"));
    let n: f64 = failures.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        n >= 10.0,
        "round robin sent ~half the first attempts to the dead instance: {failures}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_on_both_sides() {
    let hold = Backend::start(Behaviour::Hold).await;
    let rota = one_backend_rota(hold.addr, "idle_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(rota.endpoint_addr("web").unwrap())
        .await
        .unwrap();
    // Some traffic first: the timer counts from the last byte, not from connect.
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("closed by idle timeout");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "expected end of stream, got {n:?}"
    );
    eventually("the instance side to be closed", || async {
        if hold.closed() == 1 {
            Ok(())
        } else {
            Err(format!("closed={}", hold.closed()))
        }
    })
    .await;
}

#[tokio::test]
async fn traffic_keeps_an_idle_timer_from_firing() {
    let echo = Backend::start(Behaviour::Echo).await;
    let rota = one_backend_rota(echo.addr, "idle_timeout = \"400ms\"").await;
    let mut s = TcpStream::connect(rota.endpoint_addr("web").unwrap())
        .await
        .unwrap();
    // Twelve round trips 100 ms apart span three idle timeouts; each resets it.
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    for i in 0..12u8 {
        interval.tick().await;
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .await
            .unwrap_or_else(|e| panic!("round trip {i} failed: {e}"));
        assert_eq!(b[0], i);
    }
}
