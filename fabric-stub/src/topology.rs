//! The topology the fabric publishes: every instance, where it runs and how to reach it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rota_probe::agent::AgentState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why an instance (re)started. Every start is recorded with one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartReason {
    /// Deployed for the first time.
    FirstStart,
    /// The role process exited and its guest agent restarted it.
    Crash,
    /// Restarted on the same host with its differencing disk kept.
    Reboot,
    /// Restarted on the same host with a new, empty differencing disk.
    Reimage,
    /// Restarted on a new version of its role (rolling update).
    Update,
    /// Re-created on another host (host or fault-domain failure, or repeated
    /// heartbeat failures), with a new, empty differencing disk.
    Move,
    /// Added by a scale-up.
    Scale,
}

impl StartReason {
    /// Every reason, in documentation order.
    pub const ALL: [StartReason; 7] = [
        StartReason::FirstStart,
        StartReason::Crash,
        StartReason::Reboot,
        StartReason::Reimage,
        StartReason::Update,
        StartReason::Move,
        StartReason::Scale,
    ];

    /// The spelling used in the API, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StartReason::FirstStart => "first-start",
            StartReason::Crash => "crash",
            StartReason::Reboot => "reboot",
            StartReason::Reimage => "reimage",
            StartReason::Update => "update",
            StartReason::Move => "move",
            StartReason::Scale => "scale",
        }
    }
}

impl std::fmt::Display for StartReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance as the balancer and the other instances see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub role: String,
    /// `<role>-<index>`, unique in the service.
    pub name: String,
    /// Where clients are proxied to: the role process's own port.
    pub addr: SocketAddr,
    /// The guest agent's status address; `None` while the agent is starting.
    pub agent: Option<SocketAddr>,
    pub update_domain: u32,
    pub fault_domain: u32,
    pub host: String,
    /// The fabric's latest view: the agent's last answer, or what an
    /// operation made of it (`Stopping` while it is being taken down).
    pub state: AgentState,
    /// Counts starts by the fabric (not restarts by the agent after a crash).
    pub incarnation: u64,
    /// The role version it runs (1 at deployment, +1 per rolling update).
    pub version: u64,
}

impl InstanceInfo {
    /// Whether the balancer should keep it as a pool member: everything but an
    /// instance being taken down (it drains) or already stopped.
    pub fn is_member(&self) -> bool {
        !matches!(self.state, AgentState::Stopping | AgentState::Stopped)
    }
}

/// Every instance of the service at one version. Versions only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub version: u64,
    pub instances: Vec<InstanceInfo>,
}

impl Topology {
    /// The instances of `role`, in index order.
    pub fn role<'a>(&'a self, role: &'a str) -> impl Iterator<Item = &'a InstanceInfo> + 'a {
        self.instances.iter().filter(move |i| i.role == role)
    }

    /// The instance called `name`.
    pub fn instance(&self, name: &str) -> Option<&InstanceInfo> {
        self.instances.iter().find(|i| i.name == name)
    }
}

/// A topology change, published on [`crate::Fabric::events`].
#[derive(Clone, Debug)]
pub enum TopologyEvent {
    /// A change to version `from` is about to be made, for `reason`.
    Changing { from: u64, reason: String },
    /// The change is made: this is the new topology.
    Changed(Arc<Topology>),
}

/// Reads a topology file written by the fabric (`<state_dir>/topology.json`).
pub fn read_file(path: &Path) -> std::io::Result<Topology> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Follows a fabric that runs in another process through its topology file:
/// the file is read every `interval` and each newer version is published.
/// When the fabric stops, the file stops changing and the receiver keeps the
/// last topology it had (SPEC rotation rule 10).
pub fn follow_file(
    path: PathBuf,
    interval: Duration,
    stop: CancellationToken,
) -> watch::Receiver<Arc<Topology>> {
    let first = read_file(&path).unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tx.closed() => break,
                _ = tick.tick() => {}
            }
            // A half-written file cannot be seen (the fabric renames into
            // place), so a read error only means "no fabric yet".
            if let Ok(next) = read_file(&path) {
                if next.version > tx.borrow().version {
                    tx.send_replace(Arc::new(next));
                }
            }
        }
    });
    rx
}
