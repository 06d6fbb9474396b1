//! The fabric stub with real processes: `rota fabric run` as a child, guest agents, role processes.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// Long enough for several restarts with backoff on a loaded 2-core machine.
const SLOW: Duration = Duration::from_secs(30);

/// A `rota fabric run` child with its own state folder; on drop it is killed
/// and so is every instance it left behind.
struct FabricRun {
    process: Option<RotaProcess>,
    dir: TempDir,
    config: PathBuf,
    admin: SocketAddr,
}

impl FabricRun {
    async fn start(instances: u32, extra_role: &str) -> FabricRun {
        let dir = TempDir::new("fabric");
        let rota = env!("CARGO_BIN_EXE_rota");
        let state = dir.0.join("state");
        let toml = format!(
            r#"[[endpoint]]
name = "web"
listen = "127.0.0.1:0"
pool = "web"

[[role]]
name = "web"
instances = {instances}
command = ["env", "ROTA_WEB_TEST_HOOKS=1", "{rota}", "demo-backend", "--listen", "127.0.0.1:{{port}}", "--name", "{{instance}}"]
health_path = "/health"
{extra_role}

[fabric]
state_dir = "{}"
heartbeat_interval = "200ms"
heartbeat_misses = 2
drain_delay = "100ms"
shutdown_grace = "5s"
ready_deadline = "20s"
"#,
            state.display()
        );
        let config = dir.write("fabric.toml", &toml);
        let mut run = FabricRun {
            process: None,
            dir,
            config,
            admin: "127.0.0.1:1".parse().unwrap(),
        };
        run.spawn().await;
        run
    }

    async fn spawn(&mut self) {
        let p = RotaProcess::spawn(&[
            "fabric",
            "run",
            "--config",
            self.config.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ]);
        self.admin = p.log_addr("fabric admin listening", "admin").await;
        self.process = Some(p);
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.0.join("state")
    }

    async fn status(&self) -> Value {
        let (code, v) = http_json("GET", self.admin, "/api/v1/fabric", None)
            .await
            .expect("fabric answers");
        assert_eq!(code, 200, "{v}");
        v
    }

    async fn instance(&self, name: &str) -> Value {
        let s = self.status().await;
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    }

    async fn history(&self) -> Vec<Value> {
        let (_, v) = http_json("GET", self.admin, "/api/v1/fabric/history", None)
            .await
            .unwrap();
        v["starts"].as_array().cloned().unwrap_or_default()
    }

    async fn starts(&self, instance: &str, reason: &str) -> usize {
        self.history()
            .await
            .iter()
            .filter(|s| s["instance"] == instance && s["reason"] == reason)
            .count()
    }

    /// Posts an operation and waits until the fabric reports it done.
    async fn operate(&self, path: &str, body: Option<Value>) -> Value {
        let (code, v) = http_json(
            "POST",
            self.admin,
            &format!("/api/v1/fabric{path}"),
            body.as_ref(),
        )
        .await
        .unwrap();
        assert!(code == 200 || code == 202, "POST {path}: {code} {v}");
        let id = v["operation"]
            .as_u64()
            .or(v["id"].as_u64())
            .expect("an operation id");
        eventually_within(SLOW, &format!("operation {path} to finish"), || async {
            let s = self.status().await;
            let op = &s["operation"];
            match (op["id"].as_u64(), op["state"].as_str()) {
                (Some(i), Some("done")) if i == id => Ok(op.clone()),
                (Some(i), Some("failed")) if i == id => panic!("operation {path} failed: {op}"),
                _ => Err(op.to_string()),
            }
        })
        .await
    }

    async fn wait_state(&self, name: &str, state: &str) -> Value {
        eventually_within(SLOW, &format!("{name} to be {state}"), || async {
            let i = self.instance(name).await;
            if i["state"] == state {
                Ok(i)
            } else {
                Err(i.to_string())
            }
        })
        .await
    }

    async fn wait_all_ready(&self, count: usize) -> Vec<Value> {
        eventually_within(SLOW, &format!("{count} instances Ready"), || async {
            let s = self.status().await;
            let all = s["instances"].as_array().cloned().unwrap_or_default();
            if all.len() == count && all.iter().all(|i| i["state"] == "Ready") {
                Ok(all)
            } else {
                Err(s["instances"].to_string())
            }
        })
        .await
    }
}

impl Drop for FabricRun {
    fn drop(&mut self) {
        self.process.take();
        kill_fabric_instances(&self.state_dir());
    }
}

fn addr_of(instance: &Value, key: &str) -> SocketAddr {
    instance[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {instance}"))
        .parse()
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http("GET", addr, path).await
}

async fn agent_status(agent: SocketAddr) -> Value {
    let (code, v) = http_json("GET", agent, "/rota/agent/v1/status", None)
        .await
        .expect("agent answers");
    assert_eq!(code, 200);
    v
}

fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_places_instances_across_domains_and_each_serves() {
    let f = FabricRun::start(4, "").await;
    let all = f.wait_all_ready(4).await;
    let uds: Vec<u64> = all
        .iter()
        .map(|i| i["update_domain"].as_u64().unwrap())
        .collect();
    assert_eq!(uds, [0, 1, 2, 3]);
    let fd0 = all.iter().filter(|i| i["fault_domain"] == 0).count();
    assert_eq!(fd0, 2, "no fault domain holds more than half: {all:?}");
    for i in &all {
        let (code, body) = get(addr_of(i, "addr"), "/").await;
        assert_eq!(
            (code, body.trim()),
            (
                200,
                format!("hello from {}", i["name"].as_str().unwrap()).as_str()
            )
        );
        let st = agent_status(addr_of(i, "agent")).await;
        assert_eq!(st["state"], "Ready");
    }
    assert_eq!(
        f.history()
            .await
            .iter()
            .filter(|s| s["reason"] == "first-start")
            .count(),
        4
    );
    // Instances can read the topology through their agent.
    let (code, topo) = http_json(
        "GET",
        addr_of(&all[0], "agent"),
        "/rota/agent/v1/topology",
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(topo["instances"].as_array().map(Vec::len), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_restarts_the_role_then_a_crash_loop_ends_failed() {
    let f = FabricRun::start(2, "").await;
    f.wait_all_ready(2).await;
    let web0 = f.instance("web-0").await;
    let (addr, agent) = (addr_of(&web0, "addr"), addr_of(&web0, "agent"));
    let first_pid = agent_status(agent).await["role_pid"].as_u64().unwrap();
    let _ = request("POST", addr, "/crash", None).await;
    let st = eventually_within(SLOW, "web-0 restarted and Ready", || async {
        let st = agent_status(agent).await;
        if st["state"] == "Ready" && st["role_pid"].as_u64() != Some(first_pid) {
            Ok(st)
        } else {
            Err(st.to_string())
        }
    })
    .await;
    assert_eq!(st["role_starts"], 2);
    eventually_within(SLOW, "a crash start in the history", || async {
        let n = f.starts("web-0", "crash").await;
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} crash starts"))
        }
    })
    .await;
    assert_eq!(
        agent_status(agent).await["incarnation"],
        1,
        "the agent restarted the role, the fabric did not"
    );

    // Four more crashes within the window: a crash loop, Failed, not restarted.
    for _ in 0..4 {
        let st = eventually_within(SLOW, "web-0 Ready or Failed", || async {
            let st = agent_status(agent).await;
            if st["state"] == "Ready" || st["state"] == "Failed" {
                Ok(st)
            } else {
                Err(st.to_string())
            }
        })
        .await;
        if st["state"] == "Failed" {
            break;
        }
        let _ = http_json("POST", addr, "/crash", None).await;
        eventually_within(SLOW, "the role to go down", || async {
            let st = agent_status(agent).await;
            if st["state"] != "Ready" {
                Ok(())
            } else {
                Err(st.to_string())
            }
        })
        .await;
    }
    let st = eventually_within(SLOW, "web-0 Failed", || async {
        let st = agent_status(agent).await;
        if st["state"] == "Failed" {
            Ok(st)
        } else {
            Err(st.to_string())
        }
    })
    .await;
    assert!(
        st["detail"].as_str().unwrap().contains("crash loop"),
        "{st}"
    );
    f.wait_state("web-0", "Failed").await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a failed role is not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_takes_an_instance_out_without_a_restart_and_hang_is_unresponsive() {
    let f = FabricRun::start(2, "").await;
    f.wait_all_ready(2).await;
    let web1 = f.instance("web-1").await;
    let (addr, agent) = (addr_of(&web1, "addr"), addr_of(&web1, "agent"));
    let pid = agent_status(agent).await["role_pid"].clone();
    let (code, _) = http("POST", addr, "/busy").await;
    assert_eq!(code, 200);
    assert_eq!(agent_status(agent).await["state"], "Busy");
    f.wait_state("web-1", "Busy").await;
    let st = agent_status(agent).await;
    assert_eq!(
        (st["role_pid"].clone(), st["role_starts"].clone()),
        (pid.clone(), json!(1)),
        "not restarted"
    );
    http("POST", addr, "/ready").await;
    f.wait_state("web-1", "Ready").await;

    // A hang: the process lives on, the agent never says Ready.
    let _ = http_json("POST", addr, "/hang", None).await;
    f.wait_state("web-1", "Unresponsive").await;
    let st = agent_status(agent).await;
    assert_eq!(st["role_pid"], pid, "a hung role is left running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_keeps_the_disk_and_reimage_wipes_it() {
    let f = FabricRun::start(1, "").await;
    f.wait_all_ready(1).await;
    let put = |addr: SocketAddr| async move {
        http_json("PUT", addr, "/disk/note.txt", Some(&json!("kept")))
            .await
            .unwrap()
            .0
    };
    let addr = addr_of(&f.instance("web-0").await, "addr");
    assert_eq!(put(addr).await, 200);
    assert_eq!(get(addr, "/disk/note.txt").await.0, 200);

    f.operate("/instances/web-0/reboot", None).await;
    let i = f.wait_state("web-0", "Ready").await;
    assert_eq!(i["incarnation"], 2);
    let (code, body) = get(addr_of(&i, "addr"), "/disk/note.txt").await;
    assert_eq!(
        (code, body.as_str()),
        (200, "\"kept\""),
        "the differencing disk survives a reboot"
    );

    f.operate("/instances/web-0/reimage", None).await;
    let i = f.wait_state("web-0", "Ready").await;
    assert_eq!(
        get(addr_of(&i, "addr"), "/disk/note.txt").await.0,
        404,
        "a reimage starts on an empty disk"
    );
    assert_eq!(f.starts("web-0", "reboot").await, 1);
    assert_eq!(f.starts("web-0", "reimage").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fault_domain_moves_its_instances_elsewhere() {
    let f = FabricRun::start(4, "").await;
    let before = f.wait_all_ready(4).await;
    let in_fd0: Vec<String> = before
        .iter()
        .filter(|i| i["fault_domain"] == 0)
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    let old_pids: Vec<u64> = before
        .iter()
        .filter(|i| i["fault_domain"] == 0)
        .map(|i| i["agent_pid"].as_u64().unwrap())
        .collect();
    assert_eq!(in_fd0.len(), 2);
    f.operate("/fault-domains/0/fail", None).await;
    for pid in old_pids {
        assert!(
            !pid_alive(pid),
            "every process of the failed domain is gone"
        );
    }
    let after = f.wait_all_ready(4).await;
    for i in &after {
        assert_eq!(i["fault_domain"], 1, "{i}");
        assert_eq!(get(addr_of(i, "addr"), "/").await.0, 200);
    }
    for name in &in_fd0 {
        assert_eq!(f.starts(name, "move").await, 1, "{name} moved");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_then_in_drains_and_removes_instances() {
    let f = FabricRun::start(2, "").await;
    f.wait_all_ready(2).await;
    f.operate("/roles/web/scale", Some(json!({"instances": 3})))
        .await;
    let all = f.wait_all_ready(3).await;
    assert_eq!(f.starts("web-2", "scale").await, 1);
    let removed: Vec<(SocketAddr, u64)> = all[1..]
        .iter()
        .map(|i| (addr_of(i, "addr"), i["agent_pid"].as_u64().unwrap()))
        .collect();
    f.operate("/roles/web/scale", Some(json!({"instances": 1})))
        .await;
    let left = f.wait_all_ready(1).await;
    assert_eq!(left[0]["name"], "web-0");
    for (addr, pid) in removed {
        assert!(!pid_alive(pid));
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "{addr} still serves"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_agent_gets_its_instance_rebooted() {
    let f = FabricRun::start(1, "").await;
    let i = f.wait_all_ready(1).await.remove(0);
    let pid = i["agent_pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .status()
        .unwrap();
    eventually_within(SLOW, "web-0 rebooted by the fabric", || async {
        let i = f.instance("web-0").await;
        if i["agent_pid"].as_u64() != Some(pid) && i["state"] == "Ready" {
            Ok(())
        } else {
            Err(i.to_string())
        }
    })
    .await;
    assert_eq!(f.starts("web-0", "reboot").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_outlive_a_killed_fabric_and_a_new_one_readopts_them() {
    let mut f = FabricRun::start(2, "").await;
    let before = f.wait_all_ready(2).await;
    let history = f.history().await.len();
    f.process.as_ref().unwrap().signal("KILL");
    f.process.as_mut().unwrap().exit_code().await;
    // The fabric is gone: agents and roles keep running and answering probes.
    for i in &before {
        assert_eq!(agent_status(addr_of(i, "agent")).await["state"], "Ready");
        assert_eq!(get(addr_of(i, "addr"), "/").await.0, 200);
    }
    f.process.take();
    f.spawn().await;
    let after = f.wait_all_ready(2).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b["agent_pid"], a["agent_pid"], "re-adopted, not restarted");
        assert_eq!(b["incarnation"], a["incarnation"]);
    }
    assert_eq!(f.history().await.len(), history, "no new starts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_walks_update_domains_one_at_a_time() {
    let f = FabricRun::start(3, "update_domains = 3").await;
    f.wait_all_ready(3).await;
    let (code, v) = http_json(
        "POST",
        f.admin,
        "/api/v1/fabric/roles/web/update",
        Some(&json!({"mode": "manual"})),
    )
    .await
    .unwrap();
    assert!(code == 200 || code == 202, "{v}");
    // Sample while it waits after UD 0: only web-0 has the new version.
    let s = eventually_within(SLOW, "the walk to wait for continue", || async {
        let s = f.status().await;
        if s["operation"]["state"] == "waiting-for-continue" {
            Ok(s)
        } else {
            Err(s["operation"].to_string())
        }
    })
    .await;
    let versions: Vec<u64> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1, 1]);
    for _ in 0..2 {
        eventually_within(SLOW, "continue accepted", || async {
            match http_json("POST", f.admin, "/api/v1/fabric/continue", None).await {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        tokio::task::yield_now().await;
        eventually_within(SLOW, "the next step", || async {
            let s = f.status().await;
            let st = s["operation"]["state"].as_str().unwrap_or("").to_owned();
            if st == "waiting-for-continue" || st == "done" {
                Ok(())
            } else {
                Err(st)
            }
        })
        .await;
    }
    eventually_within(SLOW, "update done", || async {
        let s = f.status().await;
        if s["operation"]["state"] == "done" {
            Ok(())
        } else {
            Err(s["operation"].to_string())
        }
    })
    .await;
    let all = f.wait_all_ready(3).await;
    assert!(all.iter().all(|i| i["version"] == 2), "{all:?}");
    assert_eq!(
        f.history()
            .await
            .iter()
            .filter(|s| s["reason"] == "update")
            .count(),
        3
    );
}
