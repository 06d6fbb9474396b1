//! The no-argument demo: a fabric role of three built-in web instances (real processes, each with its
//! guest agent) behind one balancer on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::Rota;

/// Where the demo listens by default.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";
/// Instances of the demo's web role.
pub const DEMO_INSTANCES: usize = 3;
/// How long the demo waits for its instances to be in rotation before it
/// prints the banner anyway.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The demo's config. Its guest-agent probe runs every second and takes an
/// instance out after 3 s without success (or at once on a refusal): fast
/// enough to watch, far below Azure's 15 s / 31 s.
fn demo_toml(listen: SocketAddr, admin: SocketAddr, state_dir: &std::path::Path) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[[endpoint]]
name = "web"
listen = "{listen}"
pool = "web"

[endpoint.probe]
protocol = "guest-agent"
interval = "1s"
timeout = "3s"

[[role]]
name = "web"
instances = {DEMO_INSTANCES}
command = ["rota", "demo-backend", "--listen", "127.0.0.1:{{port}}", "--name", "{{instance}}"]
health_path = "/health"

[fabric]
state_dir = "{}"
heartbeat_interval = "1s"
drain_delay = "1s"
shutdown_grace = "10s"
ready_deadline = "1m"
stop_instances_on_exit = true
"#,
        state_dir.display()
    )
}

/// A running demo.
pub struct Demo {
    pub rota: Rota,
    state_dir: PathBuf,
}

impl Demo {
    /// Starts the fabric's web role on free loopback ports and the balancer in
    /// front, and waits (up to 30 s) until every instance is in rotation.
    pub async fn start(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<Demo> {
        let state_dir = std::env::temp_dir().join(format!("rota-demo-{}", std::process::id()));
        let toml = demo_toml(listen, admin, &state_dir);
        let loaded = rota_config::parse(&toml, "demo").context("the demo's own config")?;
        let rota = Rota::start(loaded.config).await?;
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let in_rotation = rota
                .balancer()
                .endpoint("web")
                .map_or(0, |e| e.pool.load().candidates().len());
            if in_rotation == DEMO_INSTANCES || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Demo { rota, state_dir })
    }

    /// Prints what is where, for the person who just typed `rota`.
    pub fn banner(&self) -> String {
        let listen = self
            .rota
            .endpoint_addr("web")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin = self.rota.admin_addr();
        let status = self.rota.fabric().map(|f| f.status()).unwrap_or_default();
        let mut s = String::new();
        s.push_str(
            "rota demo: a balancer in front of a fabric role of three built-in web instances\n",
        );
        s.push_str(&format!("  balancer   http://{listen}/   (five-tuple hash; guest-agent probe every 1s, out after 3s)\n"));
        let mut first_pid = None;
        for i in status["instances"].as_array().into_iter().flatten() {
            let pid = i["agent_pid"].as_u64().unwrap_or(0);
            first_pid.get_or_insert(pid);
            s.push_str(&format!(
                "  instance   {} at {} (agent {}, pid {pid}, update domain {}, fault domain {})\n",
                i["name"].as_str().unwrap_or("?"),
                i["addr"].as_str().unwrap_or("?"),
                i["agent"].as_str().unwrap_or("?"),
                i["update_domain"],
                i["fault_domain"],
            ));
        }
        s.push_str(&format!("  admin API  http://{admin}/api/v1/endpoints\n"));
        s.push_str(&format!(
            "  fabric     http://{admin}/api/v1/fabric   (rota fabric status --admin {admin})\n"
        ));
        s.push_str(&format!("  metrics    http://{admin}/metrics\n"));
        s.push_str(&format!(
            "try: curl http://{listen}/   or   wrk -t2 -c64 -d10s http://{listen}/\n"
        ));
        s.push_str(&format!(
            "drain one: curl -X POST http://{admin}/api/v1/endpoints/web/instances/web-0/drain\n"
        ));
        if let Some(pid) = first_pid {
            s.push_str(&format!(
                "kill one:  kill -KILL -- -{pid}   (web-0 leaves rotation at once, the fabric reboots it)\n"
            ));
        }
        s.push_str("Ctrl-C stops it.\n");
        s
    }

    /// Drains the balancer, then stops the fabric and its instances.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let drained = self.rota.shutdown_within(grace).await;
        let _ = std::fs::remove_dir_all(&self.state_dir);
        drained
    }
}
