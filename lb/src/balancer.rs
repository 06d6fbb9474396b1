//! The balancer: endpoints bound from config, data-plane worker threads, rotation and shutdown.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rota_config::Config;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::endpoint::{self, Endpoint};
use crate::metrics::Metrics;
use crate::rotation::Rotation;

/// A running data plane.
///
/// Each worker thread runs its own single-threaded tokio runtime with one
/// SO_REUSEPORT listener per endpoint: the kernel spreads new connections over
/// the workers and a connection stays on the thread that accepted it, so the
/// copy path never crosses threads.
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    rotation: Arc<Rotation>,
    stop_accepting: CancellationToken,
    hard_stop: CancellationToken,
    workers: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("endpoint {endpoint}: cannot listen on {addr}: {source}")]
    Bind {
        endpoint: String,
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("cannot start data-plane worker: {0}")]
    Worker(io::Error),
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Balancer {
    /// Binds every endpoint and starts `workers` data-plane threads (at least one).
    /// Pools start empty: members arrive through [`Rotation::apply`].
    pub fn start(
        config: &Config,
        registry: &prometheus::Registry,
        workers: usize,
    ) -> Result<Balancer, StartError> {
        let workers = workers.max(1);
        let metrics = Metrics::register(registry)?;
        let mut endpoints = Vec::new();
        let mut per_worker: Vec<Vec<(Arc<Endpoint>, std::net::TcpListener)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for cfg in &config.endpoints {
            let (ep, sockets) =
                Endpoint::bind(cfg, &metrics, workers).map_err(|source| StartError::Bind {
                    endpoint: cfg.name.clone(),
                    addr: cfg.listen,
                    source,
                })?;
            info!(endpoint = %ep.name, listen = %ep.listen, distribution = ep.distribution.as_str(), "endpoint listening");
            for (i, s) in sockets.into_iter().enumerate() {
                per_worker[i].push((ep.clone(), s));
            }
            endpoints.push(ep);
        }
        let rotation = Arc::new(Rotation::new(&endpoints, metrics));
        let stop_accepting = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let mut threads = Vec::new();
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StartError::Worker)?;
            let stop = stop_accepting.clone();
            let hard = hard_stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("rota-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        for (ep, listener) in listeners {
                            tokio::spawn(endpoint::accept_loop(ep, listener, stop.clone()));
                        }
                        hard.cancelled().await;
                    });
                    // Dropping the runtime drops every connection still open.
                })
                .map_err(StartError::Worker)?;
            threads.push(handle);
        }
        Ok(Balancer {
            endpoints,
            rotation,
            stop_accepting,
            hard_stop,
            workers: threads,
        })
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn endpoint(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.iter().find(|e| &*e.name == name)
    }

    pub fn rotation(&self) -> &Arc<Rotation> {
        &self.rotation
    }

    /// Client connections open now, over all endpoints.
    pub fn active_connections(&self) -> i64 {
        self.endpoints.iter().map(|e| e.metrics.active.get()).sum()
    }

    /// Stops accepting, waits up to `grace` for live connections to finish,
    /// then closes the rest. Returns true when every connection finished in time.
    pub async fn shutdown(mut self, grace: Duration) -> bool {
        self.stop_accepting.cancel();
        let deadline = tokio::time::Instant::now() + grace;
        let mut drained = true;
        loop {
            let live = self.active_connections();
            if live <= 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(live_connections = live, grace = ?grace, "shutdown grace expired: closing live connections");
                drained = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.hard_stop.cancel();
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        drained
    }
}

impl Drop for Balancer {
    /// A balancer dropped without [`Balancer::shutdown`] stops at once: its
    /// worker threads close their listeners and connections and exit.
    fn drop(&mut self) {
        self.stop_accepting.cancel();
        self.hard_stop.cancel();
    }
}
