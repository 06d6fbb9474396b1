//! The `rota` binary as operators run it: check, signals and graceful shutdown, EMFILE recovery, the demo.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config_for(backend: SocketAddr, extra_top: &str) -> String {
    format!(
        "{extra_top}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[endpoint]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n[[pool]]\nname = \"web\"\n[[pool.backend]]\nname = \"web-0\"\naddress = \"{backend}\"\n"
    )
}

async fn echo_roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut back)).await??;
    assert_eq!(back, msg);
    Ok(())
}

/// rota run from a config file over one echo backend, with one proxied
/// connection already open (and proven to echo).
/// Bind `_echo` and `_dir` when destructuring: fields left to `..` are
/// dropped at once, which would stop the backend.
struct LiveRota {
    rota: RotaProcess,
    live: TcpStream,
    listen: SocketAddr,
    _echo: Backend,
    _dir: TempDir,
}

async fn rota_with_a_live_connection(tag: &str, top: &str) -> LiveRota {
    let echo = Backend::start(Behaviour::Echo).await;
    let dir = TempDir::new(tag);
    let cfg = dir.write("rota.toml", &config_for(echo.addr, top));
    let rota = RotaProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let listen: SocketAddr = rota.log_addr("endpoint listening", "listen").await;
    let live = eventually("rota to accept", || async {
        let mut s = TcpStream::connect(listen)
            .await
            .map_err(|e| e.to_string())?;
        echo_roundtrip(&mut s, b"before")
            .await
            .map_err(|e| e.to_string())?;
        Ok(s)
    })
    .await;
    LiveRota {
        rota,
        live,
        listen,
        _echo: echo,
        _dir: dir,
    }
}

#[test]
fn check_accepts_every_example_config() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_rota"))
                .arg("check")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "only {checked} example configs found in {}",
        dir.display()
    );
}

#[test]
fn check_names_file_line_and_field_and_exits_non_zero() {
    let dir = TempDir::new("check");
    let bad = dir.write(
        "bad.toml",
        "[[endpoint]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\npool = \"web\"\ndistribution = \"random\"\n\n[[pool]]\nname = \"web\"\n[[pool.backend]]\nname = \"a\"\naddress = \"localhost\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Both errors, each with file, line, column and field.
    assert!(
        err.contains("bad.toml:5:16: endpoint[0].distribution"),
        "{err}"
    );
    assert!(err.contains("\"random\""), "{err}");
    assert!(
        err.contains("bad.toml:11:11: pool[0].backend[0].address"),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_stops_accepting_lets_live_connections_finish_then_exits_zero() {
    let LiveRota {
        mut rota,
        mut live,
        listen,
        _echo,
        _dir,
    } = rota_with_a_live_connection("term", "shutdown_grace = \"30s\"").await;
    rota.signal("TERM");
    eventually("new connections to be refused", || async {
        match TcpStream::connect(listen).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_owned()),
        }
    })
    .await;
    // The connection that was open keeps working during the grace period.
    echo_roundtrip(&mut live, b"during shutdown")
        .await
        .expect("live connection still served");
    assert!(
        rota.child.try_wait().unwrap().is_none(),
        "exited while a connection was live"
    );
    drop(live);
    assert_eq!(rota.exit_code().await, Some(0), "{}", rota.stderr());
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let LiveRota {
        mut rota,
        mut live,
        _echo,
        _dir,
        ..
    } = rota_with_a_live_connection("twice", "shutdown_grace = \"10m\"").await;
    rota.signal("INT");
    rota.log_value("shutting down", "live_connections").await;
    rota.signal("INT");
    // Without the second signal it would wait ten minutes for `live`.
    assert_eq!(rota.exit_code().await, Some(130), "{}", rota.stderr());
    let _ = live.write_all(b"y").await;
}

#[tokio::test]
async fn grace_expiry_closes_what_is_left_and_exits_zero() {
    let LiveRota {
        mut rota,
        mut live,
        _echo,
        _dir,
        ..
    } = rota_with_a_live_connection("grace", "shutdown_grace = \"200ms\"").await;
    assert_eq!(rota.stop().await, Some(0), "{}", rota.stderr());
    assert!(
        rota.stderr().contains("shutdown grace expired"),
        "{}",
        rota.stderr()
    );
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(DEADLINE, live.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[tokio::test]
async fn accept_survives_running_out_of_file_descriptors() {
    let hold = Backend::start(Behaviour::Hold).await;
    let dir = TempDir::new("emfile");
    let cfg = dir.write("rota.toml", &config_for(hold.addr, "workers = 1"));
    let rota = RotaProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let listen: SocketAddr = rota.log_addr("endpoint listening", "listen").await;
    // Leave rota room for a handful of connections only.
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &rota.pid().to_string(), "--nofile=48:48"])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());

    // Far more clients than descriptors: the kernel completes their handshakes,
    // rota's accept hits EMFILE and must back off rather than spin or die.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(TcpStream::connect(listen).await.unwrap());
    }
    rota.log_value("accept failed: out of resources", "backoff_ms")
        .await;
    let warnings = rota.stderr().matches("out of resources").count();
    assert!(
        warnings <= 3,
        "EMFILE logged {warnings} times in about a second:\n{}",
        rota.stderr()
    );
    drop(clients);

    // Descriptors free again: a new connection is proxied.
    eventually("rota to serve again after EMFILE", || async {
        let before = hold.accepted();
        let _s = TcpStream::connect(listen)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
        while tokio::time::Instant::now() < deadline {
            if hold.accepted() > before {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        Err(format!("backend accepted {} in all", hold.accepted()))
    })
    .await;
    // Stop it while the in-process backend can still answer the drain.
    let mut rota = rota;
    assert_eq!(rota.stop().await, Some(0), "{}", rota.stderr());
}

#[tokio::test]
async fn the_demo_serves_from_all_three_instances() {
    let rota = RotaProcess::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let balancer = eventually("the demo banner", || async {
        let out = rota.stdout();
        out.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("balancer")
                    .map(|r| r.trim().to_owned())
            })
            .and_then(|r| r.split_whitespace().next().map(|u| u.to_owned()))
            .ok_or(format!("stdout: {out}\nstderr: {}", rota.stderr()))
    })
    .await;
    let addr: SocketAddr = balancer
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("banner address");
    let mut seen = std::collections::HashSet::new();
    for i in 0..60 {
        let (status, body) = request("GET", addr, "/", None)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        seen.insert(body.trim().to_owned());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn a_killed_demo_instance_leaves_rotation_and_clients_keep_being_served() {
    let rota = RotaProcess::spawn(&["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    let banner = eventually("the demo banner", || async {
        let out = rota.stdout();
        if out.contains("Ctrl-C") {
            Ok(out)
        } else {
            Err(format!("stdout: {out}\nstderr: {}", rota.stderr()))
        }
    })
    .await;
    let field = |prefix: &str| -> String {
        banner
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(prefix)
                    .map(|r| r.split_whitespace().next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("no {prefix} in {banner}"))
    };
    let addr: SocketAddr = field("balancer")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let admin: SocketAddr = field("metrics")
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let pid = banner
        .lines()
        .find(|l| l.contains("instance   web-0"))
        .and_then(|l| l.split("pid ").nth(1))
        .and_then(|p| p.split(',').next())
        .map(|p| p.to_owned())
        .unwrap_or_else(|| panic!("no pid for web-0 in {banner}"));
    await_rotation(admin, "web", "web-0", true).await;
    // The whole instance (its agent's process group: agent and role process).
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    // The fabric may reboot it within a probe interval, so look for the exit
    // in the transition history rather than hoping to sample it.
    let v = eventually("web-0 to leave rotation after the kill", || async {
        let v = instance_json(admin, "web", "web-0").await;
        let left =
            v["transitions"].as_array().unwrap().iter().any(|t| {
                t["in_rotation"] == false && t["at_unix_ms"].as_u64().unwrap() >= killed_at
            });
        if left {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(v["health"]["probe"], "guest-agent", "{v}");
    for i in 0..50 {
        let who = who(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert!(who.starts_with("hello from web-"), "{who}");
    }
    // The fabric notices the dead agent, reboots the instance, and it comes back.
    await_rotation(admin, "web", "web-0", true).await;
    let (_, history) = http("GET", admin, "/api/v1/fabric/history").await;
    assert!(history.contains("reboot"), "{history}");
}

#[tokio::test]
async fn sighup_reloads_pools_without_cutting_connections_and_a_bad_file_changes_nothing() {
    let (a, b) = (
        Backend::start(Behaviour::Greet("a".into())).await,
        Backend::start(Behaviour::Greet("b".into())).await,
    );
    let dir = TempDir::new("reload");
    let write = |backends: &[(&str, SocketAddr)]| {
        let mut toml = "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[endpoint]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"web\"\n\n[[pool]]\nname = \"web\"\n".to_owned();
        for (name, addr) in backends {
            toml.push_str(&format!(
                "[[pool.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            ));
        }
        dir.write("rota.toml", &toml)
    };
    let cfg = write(&[("a", a.addr)]);
    let rota = RotaProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let listen: SocketAddr = rota.log_addr("endpoint listening", "listen").await;
    let (first, mut open) = eventually("rota to accept", || async {
        greeted(listen).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(first, "a");

    // a leaves, b joins: new connections go to b, the open one to a keeps flowing.
    write(&[("b", b.addr)]);
    rota.signal("HUP");
    rota.log_value("config reloaded", "left").await;
    for i in 0..10 {
        let (who, _s) = greeted(listen).await.unwrap();
        assert_eq!(who, "b", "connection {i} after the reload");
    }
    open.write_all(b"still a\n").await.unwrap();
    assert_eq!(read_line(&mut open).await.unwrap(), "still a");

    // A broken file: an error naming file and line, and nothing changes.
    dir.write(
        "rota.toml",
        "[[endpoint]]\nname = \"web\"\nlisten = \"nowhere\"\npool = \"web\"\n",
    );
    rota.signal("HUP");
    eventually("the reload error in the log", || async {
        let logs = rota.stderr();
        if logs.contains("reload failed") && logs.contains("rota.toml:3:10: endpoint[0].listen") {
            Ok(())
        } else {
            Err(logs)
        }
    })
    .await;
    let (who, _s) = greeted(listen).await.unwrap();
    assert_eq!(who, "b");
    drop(_s);
    drop(open);
    let mut rota = rota;
    assert_eq!(rota.stop().await, Some(0), "{}", rota.stderr());
}
