//! The no-argument demo: three built-in web instances (child processes) behind one balancer on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use rota_config::{
    AdminConfig, AllDown, BackendConfig, Config, Distribution, EndpointConfig, PoolConfig,
    ProbeConfig, ProbeProtocol, TlsConfig, DEFAULT_BACKLOG, DEFAULT_CONNECT_ATTEMPTS,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_SHUTDOWN_GRACE,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::Rota;

/// Where the demo listens by default.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";
/// Instances of the demo's web role.
pub const DEMO_INSTANCES: usize = 3;
/// The demo probes every second and takes an instance out after 3 s without
/// success: fast enough to watch, far below Azure's 15 s / 31 s.
pub const DEMO_PROBE_INTERVAL: Duration = Duration::from_secs(1);
pub const DEMO_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A running demo.
pub struct Demo {
    pub rota: Rota,
    /// Instance name, address and process id of each built-in web instance.
    pub instances: Vec<(String, SocketAddr, Option<u32>)>,
    children: Vec<Child>,
}

impl Demo {
    /// Starts the web instances on free loopback ports and the balancer in front.
    pub async fn start(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<Demo> {
        let exe = std::env::current_exe().context("cannot find the rota executable")?;
        let mut instances = Vec::new();
        let mut children = Vec::new();
        for i in 0..DEMO_INSTANCES {
            let name = format!("web-{i}");
            let mut child = Command::new(&exe)
                .args(["demo-backend", "--listen", "127.0.0.1:0", "--name", &name])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start demo instance {name}"))?;
            let stdout = child.stdout.take().context("demo instance stdout")?;
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).await?;
            let addr: SocketAddr = line
                .trim()
                .rsplit(' ')
                .next()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("demo instance {name} said {line:?}, not its address"))?;
            instances.push((name, addr, child.id()));
            children.push(child);
        }
        let probe = ProbeConfig {
            protocol: ProbeProtocol::Http,
            port: None,
            path: "/health".to_owned(),
            interval: DEMO_PROBE_INTERVAL,
            timeout: DEMO_PROBE_TIMEOUT,
            attempt_timeout: rota_config::default_attempt_timeout(DEMO_PROBE_INTERVAL),
            rise: 1,
            fall: None,
            tls: TlsConfig::default(),
        };
        let config = Config {
            admin: AdminConfig { listen: admin },
            workers: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            endpoints: vec![EndpointConfig {
                name: "web".to_owned(),
                listen,
                pool: "web".to_owned(),
                target_port: None,
                distribution: Distribution::FiveTuple,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
                all_down: AllDown::Refuse,
                backlog: DEFAULT_BACKLOG,
                probe: Some(probe),
            }],
            pools: vec![PoolConfig {
                name: "web".to_owned(),
                backends: instances
                    .iter()
                    .map(|(name, addr, _)| BackendConfig {
                        name: name.clone(),
                        address: *addr,
                        weight: 1,
                        agent: None,
                    })
                    .collect(),
            }],
            roles: Vec::new(),
            fabric: rota_config::FabricConfig::default(),
        };
        let rota = Rota::start(config).await?;
        Ok(Demo {
            rota,
            instances,
            children,
        })
    }

    /// Prints what is where, for the person who just typed `rota`.
    pub fn banner(&self) -> String {
        let listen = self
            .rota
            .endpoint_addr("web")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin = self.rota.admin_addr();
        let mut s = String::new();
        s.push_str("rota demo: a balancer in front of three built-in web instances\n");
        s.push_str(&format!("  balancer   http://{listen}/   (five-tuple hash, http probe of /health every 1s, out after 3s)\n"));
        for (name, addr, pid) in &self.instances {
            let pid = pid.map(|p| p.to_string()).unwrap_or_default();
            s.push_str(&format!("  instance   {name} at {addr} (pid {pid})\n"));
        }
        s.push_str(&format!("  admin API  http://{admin}/api/v1/endpoints\n"));
        s.push_str(&format!("  metrics    http://{admin}/metrics\n"));
        s.push_str(&format!(
            "try: curl http://{listen}/   or   wrk -t2 -c64 -d10s http://{listen}/\n"
        ));
        s.push_str(&format!(
            "drain one: curl -X POST http://{admin}/api/v1/endpoints/web/instances/web-0/drain\n"
        ));
        if let Some((_, _, Some(pid))) = self.instances.first() {
            s.push_str(&format!(
                "kill one:  kill {pid}   (it leaves rotation within 3s; wrk keeps going)\n"
            ));
        }
        s.push_str("Ctrl-C stops it.\n");
        s
    }

    /// Drains the balancer, then stops the web instances.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        let drained = self.rota.shutdown_within(grace).await;
        for child in &mut self.children {
            let _ = child.kill().await;
        }
        drained
    }
}
