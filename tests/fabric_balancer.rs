//! The balancer following the fabric: a rolling update under load, and a fabric that dies and comes back.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Upper bound on any one scenario's wait (updates restart real processes).
const SLOW: Duration = Duration::from_secs(60);

fn config(dir: &TempDir, instances: u32, extra_fabric: &str) -> std::path::PathBuf {
    config_with_role(dir, "web", &web_role(instances, false), extra_fabric)
}

/// The `[[role]]` lines of `instances` built-in web instances over 5 update
/// domains; `test_hooks` enables their `/crash` and `/hang`.
fn web_role(instances: u32, test_hooks: bool) -> String {
    let rota = env!("CARGO_BIN_EXE_rota");
    let env = if test_hooks {
        r#""env", "ROTA_WEB_TEST_HOOKS=1", "#
    } else {
        ""
    };
    format!(
        r#"instances = {instances}
update_domains = 5
command = [{env}"{rota}", "demo-backend", "--listen", "127.0.0.1:{{port}}", "--name", "{{instance}}"]"#
    )
}

/// A balancer config with one endpoint in front of role `name` (its
/// `[[role]]` lines besides the name in `role`), probed through the guest
/// agents at test speed, and the fabric's state in `dir`.
fn config_with_role(
    dir: &TempDir,
    name: &str,
    role: &str,
    extra_fabric: &str,
) -> std::path::PathBuf {
    let state = dir.0.join("state");
    dir.write(
        "rota.toml",
        &format!(
            r#"[admin]
listen = "127.0.0.1:0"

[[endpoint]]
name = "{name}"
listen = "127.0.0.1:0"
pool = "{name}"

[endpoint.probe]
protocol = "guest-agent"
interval = "100ms"
timeout = "1s"
attempt_timeout = "80ms"

[[role]]
name = "{name}"
{role}
health_path = "/health"

[fabric]
state_dir = "{}"
heartbeat_interval = "200ms"
drain_delay = "300ms"
shutdown_grace = "5s"
ready_deadline = "30s"
{extra_fabric}
"#,
            state.display()
        ),
    )
}

/// Starts rota on `cfg`; returns it with its admin and endpoint addresses.
async fn start(cfg: &std::path::Path) -> (RotaProcess, SocketAddr, SocketAddr) {
    let rota = RotaProcess::spawn(&["--config", cfg.to_str().unwrap()]);
    let admin = rota
        .log_addr("admin API and /metrics listening", "admin")
        .await;
    let addr = rota.log_addr("endpoint listening", "listen").await;
    (rota, admin, addr)
}

/// `rota fabric run` on `cfg`: a fabric without a balancer.
fn fabric_run(cfg: &std::path::Path) -> RotaProcess {
    RotaProcess::spawn(&[
        "fabric",
        "run",
        "--config",
        cfg.to_str().unwrap(),
        "--admin",
        "127.0.0.1:0",
    ])
}

async fn in_rotation(admin: SocketAddr) -> usize {
    let eps = endpoints_json(admin).await;
    eps["endpoints"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["in_rotation"] == true)
        .count()
}

async fn await_in_rotation(admin: SocketAddr, n: usize) {
    eventually_within(SLOW, &format!("{n} instances in rotation"), || async {
        let got = in_rotation(admin).await;
        if got == n {
            Ok(())
        } else {
            let eps = endpoints_json(admin).await;
            Err(format!(
                "{got} in rotation: {}",
                eps["endpoints"][0]["instances"]
            ))
        }
    })
    .await;
}

/// Requests on new connections until `stop`, counting successes and failures.
fn load(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failures) = (0, Vec::new());
        let deadline = tokio::time::Instant::now() + SLOW * 2;
        while !stop.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
            match who(addr).await {
                Ok(body) if body.starts_with("hello from") => ok += 1,
                Ok(other) => failures.push(other),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (ok, failures)
    })
}

#[tokio::test]
async fn a_rolling_update_under_load_fails_no_request_and_never_downs_two_update_domains() {
    let dir = TempDir::new("rolling");
    let cfg = config(&dir, 5, "stop_instances_on_exit = true");
    let (_rota, admin, addr) = start(&cfg).await;
    await_in_rotation(admin, 5).await;
    // The fabric's own view (from heartbeats) may lag the balancer's probes.
    eventually_within(SLOW, "the fabric to see five Ready instances", || async {
        let (_, s) = http_json("GET", admin, "/api/v1/fabric", None)
            .await
            .map_err(|e| e.to_string())?;
        let ready = s["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["state"] == "Ready")
            .count();
        if ready == 5 {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let client = load(addr, stop.clone());
    // Sample the fabric: which update domains have an instance that is not Ready.
    let worst = Arc::new(AtomicUsize::new(0));
    let samples = Arc::new(AtomicUsize::new(0));
    let seen_down: Arc<std::sync::Mutex<BTreeSet<u64>>> = Default::default();
    let worst_sample: Arc<std::sync::Mutex<String>> = Default::default();
    let sampler = {
        let (stop, worst, samples, seen_down) = (
            stop.clone(),
            worst.clone(),
            samples.clone(),
            seen_down.clone(),
        );
        let worst_sample = worst_sample.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok((200, s)) = http_json("GET", admin, "/api/v1/fabric", None).await {
                    let down: BTreeSet<u64> = s["instances"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|i| i["state"] != "Ready")
                        .filter_map(|i| i["update_domain"].as_u64())
                        .collect();
                    if down.len() > worst.fetch_max(down.len(), Ordering::SeqCst) {
                        *worst_sample.lock().unwrap() = s.to_string();
                    }
                    seen_down.lock().unwrap().extend(down);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let rota_bin = env!("CARGO_BIN_EXE_rota");
    let v2 = json!([
        rota_bin,
        "demo-backend",
        "--listen",
        "127.0.0.1:{port}",
        "--name",
        "{instance}-v2"
    ]);
    let (code, v) = http_json(
        "POST",
        admin,
        "/api/v1/fabric/roles/web/update",
        Some(&json!({ "command": v2 })),
    )
    .await
    .unwrap();
    assert!(code == 200 || code == 202, "{code} {v}");
    eventually_within(SLOW, "the rolling update to finish", || async {
        let (_, s) = http_json("GET", admin, "/api/v1/fabric", None)
            .await
            .map_err(|e| e.to_string())?;
        match s["operation"]["state"].as_str() {
            Some("done") => Ok(()),
            Some("failed") => panic!("update failed: {s}"),
            _ => Err(s["operation"].to_string()),
        }
    })
    .await;
    await_in_rotation(admin, 5).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = client.await.unwrap();
    sampler.await.unwrap();

    assert!(
        failures.is_empty(),
        "{} failed requests during the update (of {}): {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 50, "only {ok} requests during the update");
    assert!(
        samples.load(Ordering::SeqCst) >= 10,
        "too few status samples"
    );
    assert_eq!(
        worst.load(Ordering::SeqCst),
        1,
        "update domains down at once (max over samples); worst sample: {}",
        worst_sample.lock().unwrap()
    );
    assert_eq!(
        seen_down.lock().unwrap().len(),
        5,
        "every update domain was updated: {:?}",
        seen_down.lock().unwrap()
    );
    for _ in 0..10 {
        let body = who(addr).await.unwrap();
        assert!(body.ends_with("-v2"), "not updated: {body}");
    }
}

#[tokio::test]
async fn the_balancer_keeps_serving_when_the_fabric_dies_and_a_new_fabric_readopts_the_instances() {
    let dir = TempDir::new("external");
    let cfg = config(&dir, 3, "external = true");
    let fabric = fabric_run(&cfg);
    let fabric_admin: SocketAddr = fabric.log_addr("fabric admin listening", "admin").await;
    let (_lb, admin, addr) = start(&cfg).await;
    await_in_rotation(admin, 3).await;

    let pids = |s: &Value| -> Vec<u64> {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["agent_pid"].as_u64())
            .collect()
    };
    let (_, before) = http_json("GET", fabric_admin, "/api/v1/fabric", None)
        .await
        .unwrap();
    let before_pids = pids(&before);
    assert_eq!(before_pids.len(), 3, "{before}");

    fabric.signal("KILL");
    let mut fabric = fabric;
    fabric.exit_code().await;
    // Rule 10: the balancer serves on its last topology; the instances run on.
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let body = who(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i} after the fabric died: {e}"));
        seen.insert(body);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(in_rotation(admin).await, 3);

    // A new fabric on the same state folder adopts the running instances.
    let again = fabric_run(&cfg);
    let again_admin: SocketAddr = again.log_addr("fabric admin listening", "admin").await;
    let after = eventually_within(SLOW, "the new fabric to adopt three instances", || async {
        let (_, s) = http_json("GET", again_admin, "/api/v1/fabric", None)
            .await
            .map_err(|e| e.to_string())?;
        if pids(&s).len() == 3
            && s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["state"] == "Ready")
        {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(
        pids(&after),
        before_pids,
        "instances were restarted instead of adopted"
    );
    let (_, history) = http_json("GET", again_admin, "/api/v1/fabric/history", None)
        .await
        .unwrap();
    let starts = history["starts"].as_array().unwrap().len();
    assert_eq!(starts, 3, "only the three first starts: {history}");
    for i in 0..30 {
        who(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i} after re-adoption: {e}"));
    }
    // A stopped fabric (SIGTERM) exits at once and leaves its instances serving.
    let mut again = again;
    assert_eq!(again.stop().await, Some(0), "{}", again.stderr());
    for i in 0..10 {
        who(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i} after the fabric stopped: {e}"));
    }
    // This test's instances outlive every fabric by design: stop them here.
    kill_fabric_instances(&dir.0.join("state"));
}

#[tokio::test]
async fn nginx_runs_as_a_fabric_role_behind_the_balancer() {
    let dir = TempDir::new("nginx-role");
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nginx-role");
    let role = format!(
        r#"instances = 2
base_image = "{}"
command = ["sh", "{{base}}/run-nginx.sh", "{{port}}", "{{disk}}", "{{instance}}"]"#,
        base.display()
    );
    let cfg = config_with_role(&dir, "nginx", &role, "stop_instances_on_exit = true");
    let (_rota, admin, addr) = start(&cfg).await;
    await_in_rotation(admin, 2).await;
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        seen.insert(
            who(addr)
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}")),
        );
    }
    assert_eq!(
        seen,
        BTreeSet::from(["nginx nginx-0".to_owned(), "nginx nginx-1".to_owned()])
    );
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until `instance` has left rotation after `since` (per its transition
/// history: an exit can be shorter than any sampling interval) and is back in.
async fn left_and_returned(admin: SocketAddr, instance: &str, since: u64) {
    eventually_within(
        SLOW,
        &format!("{instance} to leave rotation and come back"),
        || async {
            let v = instance_json(admin, "web", instance).await;
            let left =
                v["transitions"].as_array().unwrap().iter().any(|t| {
                    t["in_rotation"] == false && t["at_unix_ms"].as_u64().unwrap() >= since
                });
            if left && v["in_rotation"] == true {
                Ok(())
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn crash_busy_and_crash_loop_drive_rotation_through_the_guest_agent() {
    let dir = TempDir::new("lifecycle");
    let cfg = config_with_role(
        &dir,
        "web",
        &web_role(3, true),
        "stop_instances_on_exit = true",
    );
    let (_rota, admin, addr) = start(&cfg).await;
    await_in_rotation(admin, 3).await;
    let address = |v: &Value| -> SocketAddr { v["address"].as_str().unwrap().parse().unwrap() };
    let history = || async {
        let (_, h) = http_json("GET", admin, "/api/v1/fabric/history", None)
            .await
            .unwrap();
        h["starts"].as_array().cloned().unwrap_or_default()
    };

    // Busy: out of rotation, no restart; Ready again: back in.
    let web0 = address(&instance_json(admin, "web", "web-0").await);
    let starts_before = history().await.len();
    assert_eq!(http("POST", web0, "/busy").await.0, 200);
    let v = await_rotation(admin, "web", "web-0", false).await;
    assert_eq!(v["health"]["last_result"], "agent: Busy", "{v}");
    for i in 0..20 {
        let who = who(addr).await.unwrap();
        assert_ne!(
            who, "hello from web-0",
            "request {i} reached a Busy instance"
        );
    }
    assert_eq!(
        history().await.len(),
        starts_before,
        "Busy restarted something"
    );
    assert_eq!(http("POST", web0, "/ready").await.0, 200);
    await_rotation(admin, "web", "web-0", true).await;

    // Crash: the agent restarts the role; it leaves rotation and comes back.
    let web1 = address(&instance_json(admin, "web", "web-1").await);
    let crashed_at = unix_ms();
    let _ = request("POST", web1, "/crash", None).await;
    left_and_returned(admin, "web-1", crashed_at).await;
    // The fabric learns of the agent's restart at its next heartbeat.
    eventually_within(SLOW, "the crash to be in the fabric's history", || async {
        let crashes = history()
            .await
            .iter()
            .filter(|s| s["instance"] == "web-1" && s["reason"] == "crash")
            .count();
        if crashes == 1 {
            Ok(())
        } else {
            Err(format!("{crashes} crash starts"))
        }
    })
    .await;

    // A crash loop ends in Failed, never in rotation; clients never notice.
    let web2 = address(&instance_json(admin, "web", "web-2").await);
    eventually_within(SLOW, "web-2 to end Failed after a crash loop", || async {
        let _ = request("POST", web2, "/crash", None).await;
        let v = instance_json(admin, "web", "web-2").await;
        if v["health"]["last_result"] == "agent: Failed" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let v = instance_json(admin, "web", "web-2").await;
    assert_eq!(v["in_rotation"], false, "{v}");
    for i in 0..20 {
        let who = who(addr)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_ne!(who, "hello from web-2");
    }
}
