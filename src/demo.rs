//! The no-argument demo: three built-in web instances behind one balancer on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use rota_config::{
    AdminConfig, AllDown, BackendConfig, Config, Distribution, EndpointConfig, PoolConfig, DEFAULT_BACKLOG,
    DEFAULT_CONNECT_ATTEMPTS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_SHUTDOWN_GRACE,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Rota;

/// Where the demo listens by default.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";
/// Instances of the demo's web role.
pub const DEMO_INSTANCES: usize = 3;

/// A running demo.
pub struct Demo {
    pub rota: Rota,
    /// Instance name and address of each built-in web instance.
    pub instances: Vec<(String, SocketAddr)>,
    web: CancellationToken,
}

impl Demo {
    /// Starts the web instances on free loopback ports and the balancer in front.
    pub async fn start(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<Demo> {
        let web = CancellationToken::new();
        let mut instances = Vec::new();
        for i in 0..DEMO_INSTANCES {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let name = format!("web-{i}");
            instances.push((name.clone(), listener.local_addr()?));
            tokio::spawn(rota_fabric::web::serve(listener, name, web.clone()));
        }
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
                probe: None,
            }],
            pools: vec![PoolConfig {
                name: "web".to_owned(),
                backends: instances
                    .iter()
                    .map(|(name, addr)| BackendConfig { name: name.clone(), address: *addr, weight: 1, agent: None })
                    .collect(),
            }],
        };
        let rota = Rota::start(config).await?;
        Ok(Demo { rota, instances, web })
    }

    /// Prints what is where, for the person who just typed `rota`.
    pub fn banner(&self) -> String {
        let listen = self.rota.endpoint_addr("web").map(|a| a.to_string()).unwrap_or_default();
        let admin = self.rota.admin_addr();
        let mut s = String::new();
        s.push_str("rota demo: a balancer in front of three built-in web instances\n");
        s.push_str(&format!("  balancer   http://{listen}/   (five-tuple hash)\n"));
        for (name, addr) in &self.instances {
            s.push_str(&format!("  instance   {name} at {addr}\n"));
        }
        s.push_str(&format!("  admin API  http://{admin}/api/v1/endpoints\n"));
        s.push_str(&format!("  metrics    http://{admin}/metrics\n"));
        s.push_str(&format!("try: curl http://{listen}/   or   wrk -t2 -c64 -d10s http://{listen}/\n"));
        s.push_str(&format!(
            "drain one: curl -X POST http://{admin}/api/v1/endpoints/web/instances/web-0/drain\n"
        ));
        s.push_str("Ctrl-C stops it.\n");
        s
    }

    /// Drains the balancer, then stops the web instances.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let drained = self.rota.shutdown_within(grace).await;
        self.web.cancel();
        drained
    }
}
