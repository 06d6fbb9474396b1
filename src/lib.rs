//! The `rota` binary's wiring: config in, balancer, probes, fabric and admin
//! API up, pools joined, and one shutdown for all of it.
//!
//! `main` parses arguments and calls [`run`]; tests call [`Rota::start`] on
//! port 0 and read the bound addresses back.
//!
//! # Layout
//!
//! - [`demo`]: the no-argument demo: a fabric role of built-in web instances behind a balancer.
//! - [`membership`]: pool membership → balancer joins/leaves and probe targets.
//! - [`fabric`]: the fabric's topology → pool membership; fabric routes on the admin API.
//! - [`reload`]: a new config file applied to the running pools.
#![forbid(unsafe_code)]

pub mod demo;
pub mod fabric;
pub mod membership;
pub mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rota_config::Config;
use rota_lb::admin::{self, AdminState};
use rota_lb::{Balancer, Rotation};

use crate::membership::{Instance, Membership};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// A running rota: balancer, admin API and control tasks.
pub struct Rota {
    balancer: Balancer,
    membership: Arc<Membership>,
    /// The in-process fabric, whether to stop its instances on exit, and their grace.
    fabric: Option<(rota_fabric::Fabric, bool, Duration)>,
    admin_addr: SocketAddr,
    control: CancellationToken,
    /// Stops the control tasks when a `Rota` is dropped without a shutdown.
    _control_guard: tokio_util::sync::DropGuard,
    grace: Duration,
    /// The config as it is running (pools as last reloaded).
    running: std::sync::Mutex<Config>,
}

impl Rota {
    /// Starts everything `config` describes. Call from within a tokio runtime:
    /// the control plane (admin API, probes) runs on it, the data plane on its
    /// own worker threads.
    pub async fn start(config: Config) -> anyhow::Result<Rota> {
        let registry = prometheus::Registry::new();
        let workers = config.workers.unwrap_or_else(default_workers);
        let balancer = Balancer::start(&config, &registry, workers)?;
        let control = CancellationToken::new();

        let membership = Arc::new(Membership::new(
            &config,
            balancer.rotation().clone(),
            &registry,
        )?);
        for pool in &config.pools {
            for backend in &pool.backends {
                let instance = Instance {
                    name: backend.name.clone(),
                    addr: backend.address,
                    weight: backend.weight,
                    agent: backend.agent,
                    own_port: false,
                };
                membership.join(&pool.name, &instance, true);
            }
        }

        let mut extensions: Vec<Arc<dyn admin::AdminExtension>> = Vec::new();
        let mut fabric_handle = None;
        if !config.roles.is_empty() {
            let topology = if config.fabric.external {
                info!(state_dir = %config.fabric.state_dir.display(), "following an external fabric's topology");
                rota_fabric::topology::follow_file(
                    config.fabric.state_dir.join("topology.json"),
                    EXTERNAL_TOPOLOGY_POLL,
                    control.clone(),
                )
            } else {
                let roles = config
                    .roles
                    .iter()
                    .map(rota_fabric::RoleSpec::from)
                    .collect();
                let settings = rota_fabric::FabricSettings::from_config(&config.fabric);
                let f = rota_fabric::Fabric::start(settings, roles, &registry).await?;
                extensions.push(Arc::new(fabric::FabricAdmin(f.clone())));
                let topology = f.topology();
                fabric_handle = Some(f);
                topology
            };
            tokio::spawn(fabric::follow(
                membership.clone(),
                topology,
                control.clone(),
            ));
        }

        let admin_listener = admin::bind(config.admin.listen)
            .await
            .with_context(|| format!("admin API: cannot listen on {}", config.admin.listen))?;
        let admin_addr = admin_listener.local_addr()?;
        let state = AdminState {
            rotation: balancer.rotation().clone(),
            endpoints: balancer.endpoints().to_vec(),
            registry: registry.clone(),
            extensions,
        };
        tokio::spawn(admin::serve(admin_listener, state, control.clone()));
        tokio::spawn(tidy(balancer.rotation().clone(), control.clone()));
        info!(admin = %admin_addr, "admin API and /metrics listening");
        let _control_guard = control.clone().drop_guard();
        let fabric = fabric_handle.map(|f| {
            (
                f,
                config.fabric.stop_instances_on_exit,
                config.fabric.shutdown_grace,
            )
        });
        Ok(Rota {
            balancer,
            membership,
            fabric,
            admin_addr,
            control,
            _control_guard,
            grace: config.shutdown_grace,
            running: std::sync::Mutex::new(config),
        })
    }

    /// The bound address of an endpoint (port 0 resolved).
    pub fn endpoint_addr(&self, name: &str) -> Option<SocketAddr> {
        self.balancer.endpoint(name).map(|e| e.listen)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn rotation(&self) -> &Arc<Rotation> {
        self.balancer.rotation()
    }

    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Joins and leaves of pool instances at run time.
    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// Reads `path` again and applies its pools (see [`reload`]). A file with
    /// errors changes nothing and is returned as the error.
    pub fn reload_file(
        &self,
        path: &std::path::Path,
    ) -> Result<reload::Applied, rota_config::ConfigError> {
        let loaded = rota_config::load(path)?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        Ok(reload::apply(
            &mut running,
            &loaded.config,
            &self.membership,
        ))
    }

    /// The in-process fabric, when the config declares roles.
    pub fn fabric(&self) -> Option<&rota_fabric::Fabric> {
        self.fabric.as_ref().map(|(f, _, _)| f)
    }

    /// Stops accepting, lets live connections finish within the configured
    /// grace, then stops the rest. Returns true when nothing had to be cut.
    pub async fn shutdown(self) -> bool {
        let grace = self.grace;
        self.shutdown_within(grace).await
    }

    /// [`Rota::shutdown`] with an explicit grace period.
    pub async fn shutdown_within(self, grace: Duration) -> bool {
        info!(
            live_connections = self.balancer.active_connections(),
            ?grace,
            "shutting down: no new connections"
        );
        self.membership.shutdown();
        let drained = self.balancer.shutdown(grace).await;
        if let Some((fabric, stop_instances, role_grace)) = &self.fabric {
            fabric.shutdown(*stop_instances, *role_grace).await;
        }
        self.control.cancel();
        drained
    }
}

/// Runs `config` until `shutdown` fires, then drains. Each message on
/// `reloads` re-reads `path` (SIGHUP in the binary).
pub async fn run(
    config: Config,
    path: Option<std::path::PathBuf>,
    mut reloads: tokio::sync::mpsc::Receiver<()>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rota = Rota::start(config).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(()) = reloads.recv() => {
                let Some(path) = &path else { continue };
                match rota.reload_file(path) {
                    Ok(applied) => {
                        info!(joined = ?applied.joined, left = ?applied.left, "config reloaded");
                        if !applied.not_applied.is_empty() {
                            tracing::warn!(settings = ?applied.not_applied, "changed settings need a restart; the running ones are kept");
                        }
                    }
                    Err(e) => tracing::error!("reload failed, the running config is kept:\n{e}"),
                }
            }
        }
    }
    if rota.shutdown().await {
        info!("every connection finished; bye");
    }
    Ok(())
}

/// How often a balancer re-reads an external fabric's topology file.
const EXTERNAL_TOPOLOGY_POLL: Duration = Duration::from_millis(250);

/// One data-plane worker per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Forgets drained instances once their last connection closes.
async fn tidy(rotation: Arc<Rotation>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => rotation.tidy(),
        }
    }
}
