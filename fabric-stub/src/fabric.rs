//! The fabric controller: state, placement, processes, heartbeats, operations and topology publication.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rota_config::{FabricConfig, RoleConfig, UpdateMode};
use rota_probe::agent::AgentState;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::agent::{self, AgentFile, AGENT_FILE, STOP_PATH};
use crate::os;
use crate::placement::{self, HostSlot, Placed};
use crate::topology::{InstanceInfo, StartReason, Topology, TopologyEvent};
use crate::walk::{self, StepActions, WalkEvent, WalkPlan};

/// Start records kept in the state file and the API (oldest dropped first).
const HISTORY_LIMIT: usize = 2000;
/// Heartbeat-triggered reboots without the instance getting `Ready` in between
/// after which it is re-created on another host instead.
const REBOOTS_BEFORE_MOVE: u32 = 2;
/// How long a new agent gets to write `agent.json`.
const AGENT_START_DEADLINE: Duration = Duration::from_secs(10);

/// How the fabric runs: the operator's `[fabric]` settings, plus what the
/// fabric derives or fixes itself.
#[derive(Clone, Debug)]
pub struct FabricSettings {
    /// `[fabric]` as validated (fault-domain and host counts at least 1).
    pub config: FabricConfig,
    /// The `rota` binary: runs the guest agents, and replaces a role command's
    /// program when it is spelled `rota`. Default: the running executable.
    pub rota_program: PathBuf,
    /// How often an agent probes its role (default: a fifth of the heartbeat
    /// interval, between 100 ms and 1 s).
    pub agent_probe_interval: Duration,
    /// Crash-loop policy passed to every agent.
    pub crash_limit: u32,
    pub crash_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl FabricSettings {
    pub fn from_config(config: &FabricConfig) -> FabricSettings {
        let probe = (config.heartbeat_interval / 5)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut config = config.clone();
        config.fault_domains = config.fault_domains.max(1);
        config.hosts_per_fault_domain = config.hosts_per_fault_domain.max(1);
        FabricSettings {
            config,
            rota_program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("rota")),
            agent_probe_interval: probe,
            crash_limit: 5,
            crash_window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
        }
    }
}

/// A role as the fabric runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSpec {
    pub name: String,
    pub instances: u32,
    pub command: Vec<String>,
    pub update_domains: u32,
    pub fault_domains: u32,
    #[serde(default)]
    pub base_image: Option<PathBuf>,
    #[serde(default)]
    pub health_path: Option<String>,
}

impl From<&RoleConfig> for RoleSpec {
    fn from(r: &RoleConfig) -> RoleSpec {
        RoleSpec {
            name: r.name.clone(),
            instances: r.instances,
            command: r.command.clone(),
            update_domains: r.update_domains,
            fault_domains: r.fault_domains,
            base_image: r.base_image.clone(),
            health_path: r.health_path.clone(),
        }
    }
}

/// What an operator can ask of the fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Deploy a new role.
    Deploy(RoleSpec),
    /// Change a role's instance count; removed instances drain first.
    Scale { role: String, instances: u32 },
    /// Restart an instance keeping its differencing disk.
    Reboot { instance: String },
    /// Restart an instance on a new, empty differencing disk.
    Reimage { instance: String },
    /// Kill every process of a host; its instances move elsewhere.
    FailHost { host: String },
    /// Fail every host of a fault domain.
    FailFaultDomain { fault_domain: u32 },
    /// Put a failed host back into service (nothing moves back).
    RepairHost { host: String },
    /// Rolling update of a role, one update domain at a time.
    Update {
        role: String,
        command: Option<Vec<String>>,
        mode: Option<UpdateMode>,
    },
    /// Let a manual update go on to its next update domain.
    Continue,
    /// Reboot every host, one at a time.
    HostUpdate,
}

impl Operation {
    /// A short name for logs and the API, e.g. `reboot web-0`.
    pub fn describe(&self) -> String {
        match self {
            Operation::Deploy(spec) => format!("deploy {}", spec.name),
            Operation::Scale { role, instances } => format!("scale {role} to {instances}"),
            Operation::Reboot { instance } => format!("reboot {instance}"),
            Operation::Reimage { instance } => format!("reimage {instance}"),
            Operation::FailHost { host } => format!("fail-host {host}"),
            Operation::FailFaultDomain { fault_domain } => {
                format!("fail-fault-domain {fault_domain}")
            }
            Operation::RepairHost { host } => format!("repair-host {host}"),
            Operation::Update { role, .. } => format!("update {role}"),
            Operation::Continue => "continue".into(),
            Operation::HostUpdate => "host-update".into(),
        }
    }
}

/// What a finished operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub id: u64,
    pub operation: String,
    /// The instances it started, stopped or moved.
    pub instances: Vec<String>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    #[error("no role named {0:?}")]
    UnknownRole(String),
    #[error("no instance named {0:?}")]
    UnknownInstance(String),
    #[error("no host named {0:?}")]
    UnknownHost(String),
    #[error("no fault domain {0}")]
    UnknownFaultDomain(u32),
    #[error("another operation is in progress: {0}")]
    Busy(String),
    #[error("nothing is waiting for \"continue\"")]
    NotWaiting,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
    #[error("fabric state: {0}")]
    Io(String),
}

impl FabricError {
    /// The HTTP status the admin API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            FabricError::UnknownRole(_)
            | FabricError::UnknownInstance(_)
            | FabricError::UnknownHost(_)
            | FabricError::UnknownFaultDomain(_) => 404,
            FabricError::Busy(_) | FabricError::NotWaiting => 409,
            FabricError::Invalid(_) => 400,
            FabricError::Failed(_) | FabricError::Io(_) => 500,
        }
    }
}

/// One recorded start of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRecord {
    pub instance: String,
    pub role: String,
    pub reason: StartReason,
    pub incarnation: u64,
    /// RFC 3339 UTC.
    pub at: String,
    pub unix_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RoleState {
    spec: RoleSpec,
    version: u64,
}

/// One instance as the fabric keeps it (persisted).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    role: String,
    name: String,
    index: u32,
    update_domain: u32,
    fault_domain: u32,
    host: String,
    incarnation: u64,
    disk_generation: u64,
    port: u16,
    agent: Option<SocketAddr>,
    agent_pid: Option<u32>,
    agent_start: Option<u64>,
    state: AgentState,
    version: u64,
    role_starts_seen: u64,
    #[serde(skip)]
    misses: u32,
    #[serde(default)]
    heartbeat_reboots: u32,
    /// An operation is handling it: heartbeats update its state but take no action.
    #[serde(skip)]
    managed: bool,
}

/// Everything the fabric persists to `state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    version: u64,
    next_operation: u64,
    roles: Vec<RoleState>,
    hosts: Vec<HostSlot>,
    instances: Vec<Record>,
    history: VecDeque<StartRecord>,
}

impl State {
    fn record(&self, name: &str) -> Result<&Record, FabricError> {
        self.instances
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| FabricError::UnknownInstance(name.into()))
    }
    fn record_mut(&mut self, name: &str) -> Result<&mut Record, FabricError> {
        self.instances
            .iter_mut()
            .find(|r| r.name == name)
            .ok_or_else(|| FabricError::UnknownInstance(name.into()))
    }
    fn role(&self, name: &str) -> Result<&RoleState, FabricError> {
        self.roles
            .iter()
            .find(|r| r.spec.name == name)
            .ok_or_else(|| FabricError::UnknownRole(name.into()))
    }
    fn topology(&self) -> Topology {
        Topology {
            version: self.version,
            instances: self
                .instances
                .iter()
                .map(|r| InstanceInfo {
                    role: r.role.clone(),
                    name: r.name.clone(),
                    addr: SocketAddr::from(([127, 0, 0, 1], r.port)),
                    agent: r.agent,
                    update_domain: r.update_domain,
                    fault_domain: r.fault_domain,
                    host: r.host.clone(),
                    state: r.state,
                    incarnation: r.incarnation,
                    version: r.version,
                })
                .collect(),
        }
    }
    fn placed_except(&self, name: &str) -> Vec<Placed> {
        self.instances
            .iter()
            .filter(|r| r.name != name)
            .map(|r| Placed {
                role: r.role.clone(),
                update_domain: r.update_domain,
                fault_domain: r.fault_domain,
                host: r.host.clone(),
            })
            .collect()
    }
    /// Places instance `index` of `spec`, creating a host if placement asks for one.
    fn place(
        &mut self,
        spec: &RoleSpec,
        index: u32,
        name: &str,
        fabric_fds: u32,
    ) -> (u32, u32, String) {
        let placed = self.placed_except(name);
        let p = placement::place(
            &spec.name,
            index,
            spec.update_domains,
            spec.fault_domains,
            fabric_fds,
            &self.hosts,
            &placed,
        );
        let host = p.host.unwrap_or_else(|| {
            let n = self
                .hosts
                .iter()
                .filter(|h| h.fault_domain == p.fault_domain)
                .count();
            let name = format!("fd{}-host{n}", p.fault_domain);
            self.hosts.push(HostSlot {
                name: name.clone(),
                fault_domain: p.fault_domain,
                healthy: true,
            });
            name
        });
        (p.update_domain, p.fault_domain, host)
    }
}

/// An operation's progress, as the API shows it.
#[derive(Clone, Debug, Serialize)]
struct Progress {
    id: u64,
    operation: String,
    state: &'static str,
    started_at: String,
    events: Vec<serde_json::Value>,
    error: Option<String>,
}

struct Metrics {
    starts: prometheus::IntCounterVec,
    version: prometheus::IntGauge,
}

struct Shared {
    settings: FabricSettings,
    state: Mutex<State>,
    topology: watch::Sender<Arc<Topology>>,
    events: broadcast::Sender<TopologyEvent>,
    op_lock: Arc<tokio::sync::Mutex<()>>,
    progress: Mutex<Option<Progress>>,
    resume: Notify,
    metrics: Metrics,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// A running fabric. Cheap to clone; every clone drives the same fabric.
#[derive(Clone)]
pub struct Fabric {
    shared: Arc<Shared>,
}

/// An operation that holds the fabric's operation lock; [`Ticket::run`] runs it.
pub struct Ticket {
    fabric: Fabric,
    id: u64,
    operation: Operation,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Ticket {
    pub fn id(&self) -> u64 {
        self.id
    }

    pub async fn run(self) -> Result<Report, FabricError> {
        let f = &self.fabric;
        let what = self.operation.describe();
        info!(operation = %what, id = self.id, "fabric operation started");
        let result = f.execute(self.id, self.operation.clone()).await;
        let mut progress = f.shared.progress.lock().unwrap();
        if let Some(p) = progress.as_mut().filter(|p| p.id == self.id) {
            match &result {
                Ok(_) => p.state = "done",
                Err(e) => {
                    p.state = "failed";
                    p.error = Some(e.to_string());
                }
            }
        }
        match &result {
            Ok(r) => {
                info!(operation = %what, id = self.id, detail = %r.detail, "fabric operation done")
            }
            Err(e) => warn!(operation = %what, id = self.id, error = %e, "fabric operation failed"),
        }
        result
    }
}

impl Fabric {
    /// Starts the fabric on `settings.config.state_dir`. With a state file there, the
    /// instances still running are re-adopted (same processes) and the others
    /// restarted; then `roles` are reconciled: new roles are deployed, changed
    /// counts scaled, and a changed command rolled out as an update.
    pub async fn start(
        settings: FabricSettings,
        roles: Vec<RoleSpec>,
        registry: &prometheus::Registry,
    ) -> Result<Fabric, FabricError> {
        let io = |e: std::io::Error| FabricError::Io(e.to_string());
        std::fs::create_dir_all(&settings.config.state_dir).map_err(io)?;
        let state_file = settings.config.state_dir.join("state.json");
        let mut state: State = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| FabricError::Io(format!("{}: {e}", state_file.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(e)),
        };
        for fd in 0..settings.config.fault_domains {
            for h in 0..settings.config.hosts_per_fault_domain {
                let name = format!("fd{fd}-host{h}");
                if !state.hosts.iter().any(|x| x.name == name) {
                    state.hosts.push(HostSlot {
                        name,
                        fault_domain: fd,
                        healthy: true,
                    });
                }
            }
        }
        let metrics = Metrics {
            starts: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "rota_fabric_instance_starts_total",
                    "Instance starts by the fabric stub, by reason",
                ),
                &["role", "instance", "reason"],
            )
            .map_err(|e| FabricError::Io(e.to_string()))?,
            version: prometheus::IntGauge::new(
                "rota_fabric_topology_version",
                "Version of the fabric's published topology",
            )
            .map_err(|e| FabricError::Io(e.to_string()))?,
        };
        // A second fabric in one process (tests) shares a registry: keep going without metrics then.
        let _ = registry.register(Box::new(metrics.starts.clone()));
        let _ = registry.register(Box::new(metrics.version.clone()));
        let (topology, _) = watch::channel(Arc::new(state.topology()));
        let (events, _) = broadcast::channel(256);
        let fabric = Fabric {
            shared: Arc::new(Shared {
                settings,
                state: Mutex::new(state),
                topology,
                events,
                op_lock: Arc::new(tokio::sync::Mutex::new(())),
                progress: Mutex::new(None),
                resume: Notify::new(),
                metrics,
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        fabric.readopt().await;
        fabric.change("fabric started", |_| Ok(()))?;
        fabric.reconcile(roles).await?;
        let hb = fabric.clone();
        fabric
            .shared
            .tasks
            .spawn(async move { hb.heartbeats().await });
        Ok(fabric)
    }

    pub fn settings(&self) -> &FabricSettings {
        &self.shared.settings
    }

    /// The latest topology; changes as the fabric acts.
    pub fn topology(&self) -> watch::Receiver<Arc<Topology>> {
        self.shared.topology.subscribe()
    }

    /// Changing/Changed events from now on.
    pub fn events(&self) -> broadcast::Receiver<TopologyEvent> {
        self.shared.events.subscribe()
    }

    /// Every recorded instance start, oldest first.
    pub fn history(&self) -> Vec<StartRecord> {
        self.shared
            .state
            .lock()
            .unwrap()
            .history
            .iter()
            .cloned()
            .collect()
    }

    /// The topology file instances read (`<state_dir>/topology.json`).
    pub fn topology_file(&self) -> PathBuf {
        self.shared.settings.config.state_dir.join("topology.json")
    }

    /// Everything about the fabric, for the API.
    pub fn status(&self) -> serde_json::Value {
        let st = self.shared.state.lock().unwrap();
        let disks = |r: &Record| self.disk_dir(&r.name, r.disk_generation);
        let instances: Vec<serde_json::Value> = st
            .instances
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "role": r.role, "state": r.state, "index": r.index,
                    "update_domain": r.update_domain, "fault_domain": r.fault_domain, "host": r.host,
                    "addr": SocketAddr::from(([127, 0, 0, 1], r.port)), "agent": r.agent,
                    "agent_pid": r.agent_pid, "incarnation": r.incarnation, "version": r.version,
                    "disk": disks(r), "missed_heartbeats": r.misses,
                })
            })
            .collect();
        let hosts: Vec<serde_json::Value> = st
            .hosts
            .iter()
            .map(|h| {
                let on: Vec<&str> = st.instances.iter().filter(|r| r.host == h.name).map(|r| r.name.as_str()).collect();
                serde_json::json!({"name": h.name, "fault_domain": h.fault_domain, "healthy": h.healthy, "instances": on})
            })
            .collect();
        let roles: Vec<serde_json::Value> = st
            .roles
            .iter()
            .map(|r| serde_json::json!({"name": r.spec.name, "version": r.version, "spec": r.spec}))
            .collect();
        let operation = self.shared.progress.lock().unwrap().clone();
        serde_json::json!({
            "version": st.version,
            "state_dir": self.shared.settings.config.state_dir,
            "roles": roles,
            "hosts": hosts,
            "instances": instances,
            "operation": operation,
        })
    }

    /// Runs `operation` to its end (a rolling update may take long).
    pub async fn operate(&self, operation: Operation) -> Result<Report, FabricError> {
        self.begin(operation)?.run().await
    }

    /// Takes the operation lock for `operation` (one operation at a time,
    /// "continue" excepted) without running it yet.
    pub fn begin(&self, operation: Operation) -> Result<Ticket, FabricError> {
        let guard = if operation == Operation::Continue {
            None
        } else {
            let guard = self.shared.op_lock.clone().try_lock_owned().map_err(|_| {
                let current = self
                    .shared
                    .progress
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map(|p| p.operation.clone());
                FabricError::Busy(current.unwrap_or_default())
            })?;
            Some(guard)
        };
        let id = {
            let mut st = self.shared.state.lock().unwrap();
            st.next_operation += 1;
            st.next_operation
        };
        if operation != Operation::Continue {
            *self.shared.progress.lock().unwrap() = Some(Progress {
                id,
                operation: operation.describe(),
                state: "running",
                started_at: os::rfc3339(SystemTime::now()),
                events: Vec::new(),
                error: None,
            });
        }
        Ok(Ticket {
            fabric: self.clone(),
            id,
            operation,
            _guard: guard,
        })
    }

    /// Stops the heartbeats; with `stop_instances`, stops every instance too
    /// (each within `grace`). Without it, instances and agents keep running
    /// and a later fabric on the same state folder re-adopts them.
    pub async fn shutdown(&self, stop_instances: bool, grace: Duration) {
        self.shared.stop.cancel();
        if stop_instances {
            let names: Vec<String> = self
                .shared
                .state
                .lock()
                .unwrap()
                .instances
                .iter()
                .map(|r| r.name.clone())
                .collect();
            let mut set = JoinSet::new();
            for name in names {
                let f = self.clone();
                set.spawn(async move { f.stop_instance(&name, grace).await });
            }
            while set.join_next().await.is_some() {}
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// Kills every instance's processes at once (SIGKILL to each agent's
    /// process group). For tests and emergencies; blocking, no waiting.
    pub fn kill_all_now(&self) {
        for r in &self.shared.state.lock().unwrap().instances {
            if let Some(pid) = r.agent_pid {
                os::signal_group(pid, "KILL");
            }
        }
    }

    // ----- state and publication -----

    /// Applies `f` to the state as one topology change: Changing, the change,
    /// the new version persisted (state.json and topology.json, each written
    /// atomically), then Changed.
    fn change<T>(
        &self,
        reason: &str,
        f: impl FnOnce(&mut State) -> Result<T, FabricError>,
    ) -> Result<T, FabricError> {
        let mut st = self.shared.state.lock().unwrap();
        let _ = self.shared.events.send(TopologyEvent::Changing {
            from: st.version,
            reason: reason.to_string(),
        });
        let out = f(&mut st)?;
        st.version += 1;
        let topology = Arc::new(st.topology());
        self.persist(&st, &topology);
        self.shared.metrics.version.set(st.version as i64);
        self.shared.topology.send_replace(topology.clone());
        let _ = self.shared.events.send(TopologyEvent::Changed(topology));
        Ok(out)
    }

    fn persist(&self, st: &State, topology: &Topology) {
        let dir = &self.shared.settings.config.state_dir;
        let write = |name: &str, bytes: Vec<u8>| {
            if let Err(e) = os::write_atomic(&dir.join(name), &bytes) {
                warn!(file = name, error = %e, "cannot write fabric state");
            }
        };
        write(
            "state.json",
            serde_json::to_vec_pretty(st).unwrap_or_default(),
        );
        write(
            "topology.json",
            serde_json::to_vec_pretty(topology).unwrap_or_default(),
        );
    }

    /// Saves without a topology change (history, counters).
    fn save(&self) {
        let st = self.shared.state.lock().unwrap();
        let topology = st.topology();
        let mut topology = topology;
        topology.version = st.version;
        self.persist(&st, &topology);
    }

    fn set_state(&self, names: &[String], state: AgentState, reason: &str) {
        let _ = self.change(reason, |st| {
            for r in st.instances.iter_mut().filter(|r| names.contains(&r.name)) {
                r.state = state;
            }
            Ok(())
        });
    }

    fn set_managed(&self, names: &[String], managed: bool) {
        let mut st = self.shared.state.lock().unwrap();
        for r in st.instances.iter_mut().filter(|r| names.contains(&r.name)) {
            r.managed = managed;
        }
    }

    fn progress(&self, id: u64, event: serde_json::Value) {
        let mut p = self.shared.progress.lock().unwrap();
        if let Some(p) = p.as_mut().filter(|p| p.id == id) {
            p.state = if event["event"] == "waiting-for-continue" {
                "waiting-for-continue"
            } else {
                "running"
            };
            p.events.push(event);
        }
    }

    fn instance_dir(&self, name: &str) -> PathBuf {
        self.shared
            .settings
            .config
            .state_dir
            .join("instances")
            .join(name)
    }

    fn disk_dir(&self, name: &str, generation: u64) -> PathBuf {
        self.shared
            .settings
            .config
            .state_dir
            .join("disks")
            .join(format!("{name}.{generation}"))
    }

    fn base_dir(&self, spec: &RoleSpec) -> PathBuf {
        spec.base_image.clone().unwrap_or_else(|| {
            self.shared
                .settings
                .config
                .state_dir
                .join("base")
                .join(&spec.name)
        })
    }

    // ----- processes -----

    /// Starts instance `name` (its agent, which starts the role) and waits for
    /// the agent to report its address. Reimage, move and first starts get a
    /// new, empty differencing disk; reboot, crash and update keep it.
    async fn launch(&self, name: &str, reason: StartReason) -> Result<(), FabricError> {
        let s = &self.shared.settings;
        let new_disk = matches!(
            reason,
            StartReason::FirstStart | StartReason::Scale | StartReason::Reimage | StartReason::Move
        );
        let (record, spec, role_version, old_disk) = {
            let mut st = self.shared.state.lock().unwrap();
            let role_name = st.record(name)?.role.clone();
            let role = st.role(&role_name)?.clone();
            let r = st.record_mut(name)?;
            let old_disk = r.disk_generation;
            r.incarnation += 1;
            if new_disk {
                r.disk_generation += 1;
            }
            // A moved instance is on another "machine": a new address. Others
            // keep theirs while it is free, so the balancer's member stays put.
            if reason == StartReason::Move || r.port == 0 || !os::port_free(r.port) {
                r.port = os::free_port()
                    .map_err(|e| FabricError::Failed(format!("no free port: {e}")))?;
            }
            r.managed = true;
            (r.clone(), role.spec, role.version, old_disk)
        };
        let dir = self.instance_dir(name);
        let disk = self.disk_dir(name, record.disk_generation);
        let base = self.base_dir(&spec);
        let io = |e: std::io::Error| FabricError::Io(e.to_string());
        if new_disk && old_disk != record.disk_generation {
            let _ = std::fs::remove_dir_all(self.disk_dir(name, old_disk));
        }
        for d in [&dir, &disk, &base] {
            std::fs::create_dir_all(d).map_err(io)?;
        }
        let _ = std::fs::remove_file(dir.join(AGENT_FILE));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(io)?;
        let command = expand(
            &spec.command,
            &s.rota_program,
            record.port,
            name,
            &spec.name,
            &disk,
            &base,
        );
        let mut cmd = tokio::process::Command::new(&s.rota_program);
        cmd.arg("agent")
            .args([
                "--instance",
                name,
                "--role",
                &spec.name,
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(["--port", &record.port.to_string()])
            .args([
                "--probe-interval",
                &format!("{}ms", s.agent_probe_interval.as_millis()),
            ])
            .args([
                "--grace",
                &format!("{}ms", s.config.shutdown_grace.as_millis().max(1)),
            ])
            .args(["--crash-limit", &s.crash_limit.to_string()])
            .args([
                "--crash-window",
                &format!("{}ms", s.crash_window.as_millis().max(1)),
            ])
            .args([
                "--backoff-initial",
                &format!("{}ms", s.backoff_initial.as_millis().max(1)),
            ])
            .args([
                "--backoff-max",
                &format!("{}ms", s.backoff_max.as_millis().max(1)),
            ])
            .arg("--disk")
            .arg(&disk)
            .arg("--base")
            .arg(&base)
            .arg("--topology")
            .arg(self.topology_file())
            .args(["--incarnation", &record.incarnation.to_string()]);
        if let Some(path) = &spec.health_path {
            cmd.args(["--health-path", path]);
        }
        cmd.arg("--").args(&command);
        cmd.stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io)?)
            .stderr(log)
            .env("NO_COLOR", "1")
            // Its own process group: the agent (and the role under it) must
            // outlive this fabric, and a Ctrl-C to the fabric's terminal must
            // not reach it. Killing the group kills the whole instance.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .map_err(|e| FabricError::Failed(format!("cannot start the agent of {name}: {e}")))?;
        let pid = child.id().unwrap_or(0);
        // Reap it when it exits, so a dead agent never lingers as a zombie.
        // When the fabric stops, stop waiting: the agent outlives the fabric
        // (and is re-parented), so a shutdown must not wait for it.
        let stop = self.shared.stop.clone();
        self.shared.tasks.spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                _ = stop.cancelled() => {}
            }
        });
        let agent = wait_agent_file(&dir.join(AGENT_FILE), record.incarnation, pid).await;
        let at = SystemTime::now();
        let result = self.change(&format!("{name} started ({reason})"), |st| {
            let r = st.record_mut(name)?;
            r.agent_pid = Some(pid);
            r.agent_start = os::start_ticks(pid);
            r.agent = agent.as_ref().ok().copied();
            r.state = AgentState::Starting;
            r.version = role_version;
            r.role_starts_seen = 0;
            r.misses = 0;
            r.managed = false;
            let record = StartRecord {
                instance: name.to_string(),
                role: r.role.clone(),
                reason,
                incarnation: r.incarnation,
                at: os::rfc3339(at),
                unix_ms: os::unix_ms(at),
            };
            st.history.push_back(record);
            while st.history.len() > HISTORY_LIMIT {
                st.history.pop_front();
            }
            Ok(())
        });
        self.shared
            .metrics
            .starts
            .with_label_values(&[&spec.name, name, reason.as_str()])
            .inc();
        info!(instance = name, %reason, pid, port = record.port, host = %record.host, "instance started");
        result?;
        agent.map(|_| ()).map_err(FabricError::Failed)
    }

    /// Asks the instance's agent to stop its role within `grace` and waits for
    /// the agent to exit; then kills whatever is left of its process group.
    async fn stop_instance(&self, name: &str, grace: Duration) {
        let Ok((agent, pid)) = self.agent_of(name) else {
            return;
        };
        if let (Some(agent), Some(pid)) = (agent, pid) {
            let body = bytes::Bytes::from(
                serde_json::json!({"grace_ms": grace.as_millis() as u64}).to_string(),
            );
            let asked =
                crate::http::request(agent, "POST", STOP_PATH, Some(body), Duration::from_secs(2))
                    .await
                    .is_ok();
            if asked {
                let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
                while os::pid_alive(pid) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.kill_instance(name).await;
    }

    /// Kills every process of the instance at once and waits for the agent to go.
    async fn kill_instance(&self, name: &str) {
        let Ok((_, Some(pid))) = self.agent_of(name) else {
            return;
        };
        os::signal_group(pid, "KILL");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while os::pid_alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn agent_of(&self, name: &str) -> Result<(Option<SocketAddr>, Option<u32>), FabricError> {
        let st = self.shared.state.lock().unwrap();
        let r = st.record(name)?;
        Ok((r.agent, r.agent_pid))
    }

    /// Out of rotation, drained for `drain_delay`, stopped within the grace, started again.
    async fn recycle(
        &self,
        names: &[String],
        reason: StartReason,
        grace: Duration,
    ) -> Result<(), FabricError> {
        self.set_managed(names, true);
        self.set_state(
            names,
            AgentState::Stopping,
            &format!("{} for {reason}", names.join(", ")),
        );
        tokio::time::sleep(self.shared.settings.config.drain_delay).await;
        let mut set = JoinSet::new();
        for name in names {
            let (f, name) = (self.clone(), name.clone());
            set.spawn(async move {
                f.stop_instance(&name, grace).await;
                f.launch(&name, reason).await
            });
        }
        let mut result = Ok(());
        while let Some(r) = set.join_next().await {
            if let Ok(Err(e)) = r {
                result = Err(e);
            }
        }
        self.set_managed(names, false);
        result
    }

    /// Re-creates `name` on another healthy host (reason `move`): new host,
    /// new port, new empty differencing disk.
    async fn relocate(&self, name: &str) -> Result<(), FabricError> {
        self.set_managed(&[name.to_string()], true);
        self.kill_instance(name).await;
        let fds = self.shared.settings.config.fault_domains;
        self.change(&format!("{name} moving"), |st| {
            let r = st.record(name)?.clone();
            let spec = st.role(&r.role)?.spec.clone();
            let (_, fd, host) = st.place(&spec, r.index, name, fds);
            let r = st.record_mut(name)?;
            info!(instance = name, from = %r.host, to = %host, "moving instance");
            r.fault_domain = fd;
            r.host = host;
            r.state = AgentState::Recycling;
            Ok(())
        })?;
        let result = self.launch(name, StartReason::Move).await;
        self.set_managed(&[name.to_string()], false);
        result
    }

    // ----- start-up -----

    /// Keeps the instances whose agent is still the same process and answers;
    /// restarts the others (reason `reboot`: the instance was down while the
    /// fabric was away, its disk is kept).
    async fn readopt(&self) {
        let records: Vec<Record> = self.shared.state.lock().unwrap().instances.clone();
        let mut restart = Vec::new();
        for r in records {
            let same_process = r
                .agent_pid
                .is_some_and(|pid| os::pid_alive(pid) && os::start_ticks(pid) == r.agent_start);
            let answers = match (same_process, r.agent) {
                (true, Some(agent)) => agent::fetch_status(agent, Duration::from_secs(2))
                    .await
                    .is_ok_and(|s| s.status.instance.as_deref() == Some(r.name.as_str())),
                _ => false,
            };
            if answers {
                info!(instance = %r.name, pid = ?r.agent_pid, "re-adopted a running instance");
            } else {
                if let Some(pid) = r.agent_pid.filter(|_| same_process) {
                    os::signal_group(pid, "KILL");
                }
                restart.push(r.name.clone());
            }
        }
        for name in restart {
            info!(instance = %name, "instance not running any more; starting it again");
            if let Err(e) = self.launch(&name, StartReason::Reboot).await {
                warn!(instance = %name, error = %e, "cannot restart instance");
            }
        }
    }

    async fn reconcile(&self, roles: Vec<RoleSpec>) -> Result<(), FabricError> {
        for spec in roles {
            let known = self
                .shared
                .state
                .lock()
                .unwrap()
                .role(&spec.name)
                .ok()
                .map(|r| r.spec.clone());
            match known {
                None => {
                    self.operate(Operation::Deploy(spec)).await?;
                }
                Some(old) => {
                    if old.instances != spec.instances {
                        self.operate(Operation::Scale {
                            role: spec.name.clone(),
                            instances: spec.instances,
                        })
                        .await?;
                    }
                    if old.command != spec.command {
                        info!(role = %spec.name, "the configured command differs from the running one: rolling update");
                        let f = self.clone();
                        let op = Operation::Update {
                            role: spec.name.clone(),
                            command: Some(spec.command.clone()),
                            mode: None,
                        };
                        tokio::spawn(async move {
                            if let Err(e) = f.operate(op).await {
                                warn!(error = %e, "update from the configuration failed");
                            }
                        });
                    }
                }
            }
        }
        Ok(())
    }

    // ----- heartbeats -----

    /// fabric → host → guest agent: every interval, each agent is asked for
    /// its status. Instances on a failed host move; an agent that misses
    /// `heartbeat_misses` heartbeats in a row (or whose process is gone) gets
    /// its instance rebooted, and after repeated reboots moved.
    async fn heartbeats(&self) {
        let s = &self.shared.settings;
        let attempt = (s.config.heartbeat_interval / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        let mut tick = tokio::time::interval(s.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let targets: Vec<(String, Option<SocketAddr>, bool)> = {
                let st = self.shared.state.lock().unwrap();
                st.instances
                    .iter()
                    .map(|r| {
                        let host_ok = st.hosts.iter().any(|h| h.name == r.host && h.healthy);
                        (r.name.clone(), r.agent, host_ok)
                    })
                    .collect()
            };
            let mut set = JoinSet::new();
            for (name, agent, host_ok) in targets {
                let f = self.clone();
                set.spawn(async move {
                    if !host_ok {
                        f.host_lost(&name).await;
                        return;
                    }
                    let result = match agent {
                        Some(a) => agent::fetch_status(a, attempt).await,
                        None => Err("no agent address".into()),
                    };
                    f.heartbeat_result(&name, result).await;
                });
            }
            while set.join_next().await.is_some() {}
        }
    }

    async fn host_lost(&self, name: &str) {
        let managed = self
            .shared
            .state
            .lock()
            .unwrap()
            .record(name)
            .map(|r| r.managed)
            .unwrap_or(true);
        if managed {
            return;
        }
        warn!(
            instance = name,
            "its host is down: re-creating it elsewhere"
        );
        if let Err(e) = self.relocate(name).await {
            warn!(instance = name, error = %e, "move failed");
        }
    }

    async fn heartbeat_result(&self, name: &str, result: Result<agent::FullStatus, String>) {
        enum Action {
            None,
            Reboot,
            Move,
        }
        let action = {
            let mut st = self.shared.state.lock().unwrap();
            let Ok(r) = st.record_mut(name) else { return };
            match result {
                Ok(status) if status.incarnation == r.incarnation => {
                    r.misses = 0;
                    let crashes = status.role_starts.saturating_sub(r.role_starts_seen.max(1));
                    let first_seen = r.role_starts_seen == 0;
                    r.role_starts_seen = r.role_starts_seen.max(status.role_starts);
                    if status.status.state == AgentState::Ready {
                        r.heartbeat_reboots = 0;
                    }
                    let changed = r.state != status.status.state
                        && !(r.managed && r.state == AgentState::Stopping);
                    let new_state = status.status.state;
                    let (role, incarnation) = (r.role.clone(), r.incarnation);
                    let crashes = if first_seen {
                        status.role_starts.saturating_sub(1)
                    } else {
                        crashes
                    };
                    if crashes > 0 {
                        let at = SystemTime::now();
                        for _ in 0..crashes {
                            st.history.push_back(StartRecord {
                                instance: name.to_string(),
                                role: role.clone(),
                                reason: StartReason::Crash,
                                incarnation,
                                at: os::rfc3339(at),
                                unix_ms: os::unix_ms(at),
                            });
                            self.shared
                                .metrics
                                .starts
                                .with_label_values(&[&role, name, "crash"])
                                .inc();
                        }
                        info!(
                            instance = name,
                            crashes, "the guest agent restarted a crashed role process"
                        );
                    }
                    drop(st);
                    if changed {
                        let _ = self.change(&format!("{name} is {new_state}"), |st| {
                            st.record_mut(name)?.state = new_state;
                            Ok(())
                        });
                    } else if crashes > 0 {
                        self.save();
                    }
                    return;
                }
                // An answer from an older incarnation's agent: not ours any more.
                Ok(_) => return,
                Err(error) => {
                    if r.managed {
                        return;
                    }
                    r.misses += 1;
                    let gone = r.agent_pid.is_none_or(|pid| !os::pid_alive(pid));
                    if !gone && r.misses < self.shared.settings.config.heartbeat_misses {
                        tracing::debug!(instance = name, misses = r.misses, %error, "missed heartbeat");
                        Action::None
                    } else {
                        warn!(instance = name, misses = r.misses, agent_gone = gone, %error, "guest agent not answering");
                        r.managed = true;
                        r.heartbeat_reboots += 1;
                        if r.heartbeat_reboots > REBOOTS_BEFORE_MOVE {
                            r.heartbeat_reboots = 0;
                            Action::Move
                        } else {
                            Action::Reboot
                        }
                    }
                }
            }
        };
        let names = [name.to_string()];
        let f = self.clone();
        match action {
            Action::None => {}
            Action::Reboot => {
                self.shared.tasks.spawn(async move {
                    f.set_state(
                        &names,
                        AgentState::Recycling,
                        &format!("{} rebooting: heartbeats missed", names[0]),
                    );
                    f.kill_instance(&names[0]).await;
                    if let Err(e) = f.launch(&names[0], StartReason::Reboot).await {
                        warn!(instance = %names[0], error = %e, "reboot failed");
                    }
                    f.set_managed(&names, false);
                });
            }
            Action::Move => {
                self.shared.tasks.spawn(async move {
                    if let Err(e) = f.relocate(&names[0]).await {
                        warn!(instance = %names[0], error = %e, "move failed");
                    }
                });
            }
        }
    }

    // ----- operations -----

    async fn execute(&self, id: u64, op: Operation) -> Result<Report, FabricError> {
        let s = self.shared.settings.clone();
        let report = |instances: Vec<String>, detail: String| Report {
            id,
            operation: op.describe(),
            instances,
            detail,
        };
        match &op {
            Operation::Deploy(spec) => {
                validate_spec(spec)?;
                let names = self.change(&format!("deploy {}", spec.name), |st| {
                    if st.role(&spec.name).is_ok() {
                        return Err(FabricError::Invalid(format!(
                            "role {:?} is deployed already: scale or update it",
                            spec.name
                        )));
                    }
                    st.roles.push(RoleState {
                        spec: spec.clone(),
                        version: 1,
                    });
                    Ok(add_instances(
                        st,
                        spec,
                        spec.instances,
                        s.config.fault_domains,
                    ))
                })?;
                self.launch_all(&names, StartReason::FirstStart).await?;
                Ok(report(
                    names,
                    format!("{} instances deployed", spec.instances),
                ))
            }
            Operation::Scale { role, instances } => {
                if *instances == 0 || *instances > rota_config::MAX_ROLE_INSTANCES {
                    return Err(FabricError::Invalid(format!(
                        "expected 1 to {} instances, found {instances}",
                        rota_config::MAX_ROLE_INSTANCES
                    )));
                }
                let (spec, current) = {
                    let st = self.shared.state.lock().unwrap();
                    let spec = st.role(role)?.spec.clone();
                    let current: Vec<(u32, String)> = st
                        .instances
                        .iter()
                        .filter(|r| &r.role == role)
                        .map(|r| (r.index, r.name.clone()))
                        .collect();
                    (spec, current)
                };
                let n = current.len() as u32;
                if *instances > n {
                    let names = self.change(&format!("scale {role} out"), |st| {
                        let mut spec = spec.clone();
                        spec.instances = *instances;
                        if let Some(r) = st.roles.iter_mut().find(|r| &r.spec.name == role) {
                            r.spec.instances = *instances;
                        }
                        Ok(add_instances(
                            st,
                            &spec,
                            *instances - n,
                            s.config.fault_domains,
                        ))
                    })?;
                    self.launch_all(&names, StartReason::Scale).await?;
                    Ok(report(names, format!("{role} scaled out to {instances}")))
                } else if *instances < n {
                    let mut by_index = current;
                    by_index.sort();
                    let names: Vec<String> = by_index
                        .split_off(*instances as usize)
                        .into_iter()
                        .map(|(_, n)| n)
                        .collect();
                    self.set_managed(&names, true);
                    self.set_state(
                        &names,
                        AgentState::Stopping,
                        &format!("scale {role} in: draining {}", names.join(", ")),
                    );
                    tokio::time::sleep(s.config.drain_delay).await;
                    let mut set = JoinSet::new();
                    for name in names.clone() {
                        let f = self.clone();
                        let grace = s.config.shutdown_grace;
                        set.spawn(async move { f.stop_instance(&name, grace).await });
                    }
                    while set.join_next().await.is_some() {}
                    let dirs: Vec<PathBuf> = {
                        let st = self.shared.state.lock().unwrap();
                        st.instances
                            .iter()
                            .filter(|r| names.contains(&r.name))
                            .flat_map(|r| {
                                [
                                    self.disk_dir(&r.name, r.disk_generation),
                                    self.instance_dir(&r.name),
                                ]
                            })
                            .collect()
                    };
                    self.change(&format!("scale {role} in"), |st| {
                        st.instances.retain(|r| !names.contains(&r.name));
                        if let Some(r) = st.roles.iter_mut().find(|r| &r.spec.name == role) {
                            r.spec.instances = *instances;
                        }
                        Ok(())
                    })?;
                    for d in dirs {
                        let _ = std::fs::remove_dir_all(d);
                    }
                    Ok(report(names, format!("{role} scaled in to {instances}")))
                } else {
                    Ok(report(
                        Vec::new(),
                        format!("{role} already has {instances} instances"),
                    ))
                }
            }
            Operation::Reboot { instance } | Operation::Reimage { instance } => {
                self.shared.state.lock().unwrap().record(instance)?;
                let reason = if matches!(op, Operation::Reboot { .. }) {
                    StartReason::Reboot
                } else {
                    StartReason::Reimage
                };
                self.recycle(
                    std::slice::from_ref(instance),
                    reason,
                    s.config.shutdown_grace,
                )
                .await?;
                Ok(report(
                    vec![instance.clone()],
                    format!("{instance}: {reason} done"),
                ))
            }
            Operation::FailHost { host } => {
                let names = self.fail_hosts(|h| &h.name == host, &format!("fail-host {host}"))?;
                if names.is_none() {
                    return Err(FabricError::UnknownHost(host.clone()));
                }
                let names = names.unwrap_or_default();
                self.move_all(&names).await?;
                Ok(report(
                    names,
                    format!("host {host} failed; its instances moved"),
                ))
            }
            Operation::FailFaultDomain { fault_domain } => {
                let fd = *fault_domain;
                let names = self
                    .fail_hosts(|h| h.fault_domain == fd, &format!("fail-fault-domain {fd}"))?
                    .ok_or(FabricError::UnknownFaultDomain(fd))?;
                self.move_all(&names).await?;
                Ok(report(
                    names,
                    format!("fault domain {fd} failed; its instances moved"),
                ))
            }
            Operation::RepairHost { host } => {
                self.change(&format!("repair-host {host}"), |st| {
                    let h = st
                        .hosts
                        .iter_mut()
                        .find(|h| &h.name == host)
                        .ok_or_else(|| FabricError::UnknownHost(host.clone()))?;
                    h.healthy = true;
                    Ok(())
                })?;
                Ok(report(
                    Vec::new(),
                    format!("host {host} is back in service"),
                ))
            }
            Operation::Continue => {
                let waiting = self
                    .shared
                    .progress
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|p| p.state == "waiting-for-continue");
                if !waiting {
                    return Err(FabricError::NotWaiting);
                }
                // Running again at once, so a second "continue" cannot leave a
                // stored permit that would skip the next wait.
                if let Some(p) = self.shared.progress.lock().unwrap().as_mut() {
                    p.state = "running";
                }
                self.shared.resume.notify_one();
                Ok(report(Vec::new(), "the walk goes on".into()))
            }
            Operation::Update {
                role,
                command,
                mode,
            } => {
                if let Some(c) = command {
                    if c.is_empty() {
                        return Err(FabricError::Invalid(
                            "expected a command, found an empty one".into(),
                        ));
                    }
                }
                let version = self.change(&format!("update {role}"), |st| {
                    let r = st
                        .roles
                        .iter_mut()
                        .find(|r| &r.spec.name == role)
                        .ok_or_else(|| FabricError::UnknownRole(role.clone()))?;
                    if let Some(c) = command {
                        r.spec.command = c.clone();
                    }
                    r.version += 1;
                    Ok(r.version)
                })?;
                let uds: Vec<u32> = {
                    let st = self.shared.state.lock().unwrap();
                    let mut uds: Vec<u32> = st
                        .instances
                        .iter()
                        .filter(|r| &r.role == role)
                        .map(|r| r.update_domain)
                        .collect();
                    uds.sort();
                    uds.dedup();
                    uds
                };
                let steps: Vec<Step> = uds
                    .into_iter()
                    .map(|ud| Step::UpdateDomain {
                        role: role.clone(),
                        ud,
                    })
                    .collect();
                let manual = mode.unwrap_or(s.config.update_mode) == UpdateMode::Manual;
                self.run_walk(id, &steps, StartReason::Update, manual)
                    .await?;
                Ok(report(
                    Vec::new(),
                    format!(
                        "{role} updated to version {version}, {} update domains",
                        steps.len()
                    ),
                ))
            }
            Operation::HostUpdate => {
                let steps: Vec<Step> = {
                    let st = self.shared.state.lock().unwrap();
                    let mut hosts: Vec<(u32, String)> = st
                        .hosts
                        .iter()
                        .filter(|h| h.healthy)
                        .filter_map(|h| {
                            let lowest_ud = st
                                .instances
                                .iter()
                                .filter(|r| r.host == h.name)
                                .map(|r| r.update_domain)
                                .min()?;
                            Some((lowest_ud, h.name.clone()))
                        })
                        .collect();
                    // Hosts holding low update domains first, as a rolling update walks.
                    hosts.sort();
                    hosts.into_iter().map(|(_, h)| Step::Host(h)).collect()
                };
                self.run_walk(id, &steps, StartReason::Reboot, false)
                    .await?;
                Ok(report(
                    Vec::new(),
                    format!("{} hosts rebooted one at a time", steps.len()),
                ))
            }
        }
    }

    async fn launch_all(&self, names: &[String], reason: StartReason) -> Result<(), FabricError> {
        let mut set = JoinSet::new();
        for name in names {
            let (f, name) = (self.clone(), name.clone());
            set.spawn(async move { f.launch(&name, reason).await });
        }
        let mut result = Ok(());
        while let Some(r) = set.join_next().await {
            if let Ok(Err(e)) = r {
                result = Err(e);
            }
        }
        result
    }

    /// Marks the matching hosts failed and kills the processes of their
    /// instances; `None` when no host matched.
    fn fail_hosts(
        &self,
        matches: impl Fn(&HostSlot) -> bool,
        reason: &str,
    ) -> Result<Option<Vec<String>>, FabricError> {
        self.change(reason, |st| {
            let failed: Vec<String> = st
                .hosts
                .iter_mut()
                .filter(|h| matches(h))
                .map(|h| {
                    h.healthy = false;
                    h.name.clone()
                })
                .collect();
            if failed.is_empty() {
                return Ok(None);
            }
            let mut names = Vec::new();
            for r in st.instances.iter_mut().filter(|r| failed.contains(&r.host)) {
                if let Some(pid) = r.agent_pid {
                    os::signal_group(pid, "KILL");
                }
                r.state = AgentState::Recycling;
                r.managed = true;
                names.push(r.name.clone());
            }
            warn!(hosts = ?failed, instances = ?names, "hosts failed");
            Ok(Some(names))
        })
    }

    async fn move_all(&self, names: &[String]) -> Result<(), FabricError> {
        let mut result = Ok(());
        // One at a time: each placement sees where the previous one went.
        for name in names {
            if let Err(e) = self.relocate(name).await {
                result = Err(e);
            }
        }
        result
    }

    async fn run_walk(
        &self,
        id: u64,
        steps: &[Step],
        reason: StartReason,
        manual: bool,
    ) -> Result<(), FabricError> {
        let s = &self.shared.settings;
        let plan = WalkPlan {
            shutdown_grace: s.config.shutdown_grace,
            ready_deadline: s.config.ready_deadline,
            manual,
            poll: (s.config.heartbeat_interval / 4)
                .clamp(Duration::from_millis(20), Duration::from_secs(1)),
        };
        let actions = FabricSteps {
            fabric: self.clone(),
            id,
            reason,
        };
        walk::walk(steps, &plan, &actions, &self.shared.resume)
            .await
            .map_err(|e| FabricError::Failed(e.to_string()))
    }

    fn step_instances(&self, step: &Step) -> Vec<String> {
        let st = self.shared.state.lock().unwrap();
        st.instances
            .iter()
            .filter(|r| match step {
                Step::UpdateDomain { role, ud } => &r.role == role && r.update_domain == *ud,
                Step::Host(h) => &r.host == h,
            })
            .map(|r| r.name.clone())
            .collect()
    }
}

/// One step of a walk: a role's update domain, or a host.
#[derive(Clone, PartialEq, Eq)]
enum Step {
    UpdateDomain { role: String, ud: u32 },
    Host(String),
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::UpdateDomain { role, ud } => write!(f, "{role} UD {ud}"),
            Step::Host(h) => write!(f, "host {h}"),
        }
    }
}

struct FabricSteps {
    fabric: Fabric,
    id: u64,
    reason: StartReason,
}

impl StepActions<Step> for FabricSteps {
    async fn drain(&self, step: &Step) {
        let names = self.fabric.step_instances(step);
        self.fabric.set_managed(&names, true);
        self.fabric.set_state(
            &names,
            AgentState::Stopping,
            &format!("{step:?}: stopping {}", names.join(", ")),
        );
        tokio::time::sleep(self.fabric.shared.settings.config.drain_delay).await;
    }

    async fn stop(&self, step: &Step) {
        let grace = self.fabric.shared.settings.config.shutdown_grace;
        let mut set = JoinSet::new();
        for name in self.fabric.step_instances(step) {
            let f = self.fabric.clone();
            set.spawn(async move { f.stop_instance(&name, grace).await });
        }
        while set.join_next().await.is_some() {}
    }

    async fn kill(&self, step: &Step) {
        for name in self.fabric.step_instances(step) {
            self.fabric.kill_instance(&name).await;
        }
    }

    async fn start(&self, step: &Step) -> Result<(), String> {
        let names = self.fabric.step_instances(step);
        let result = self
            .fabric
            .launch_all(&names, self.reason)
            .await
            .map_err(|e| e.to_string());
        // Launched instances are not Ready yet: keep heartbeats from acting on them until they are.
        self.fabric.set_managed(&names, true);
        result
    }

    async fn ready(&self, step: &Step) -> bool {
        let names = self.fabric.step_instances(step);
        let mut all = true;
        for name in &names {
            let Ok((Some(agent), _)) = self.fabric.agent_of(name) else {
                all = false;
                continue;
            };
            let status = agent::fetch_status(agent, Duration::from_secs(1)).await;
            let ok = status
                .as_ref()
                .is_ok_and(|s| agent::is_ready(s.status.state));
            if let Ok(s) = status {
                let state = s.status.state;
                let changed = self
                    .fabric
                    .shared
                    .state
                    .lock()
                    .unwrap()
                    .record(name)
                    .map(|r| r.state != state)
                    .unwrap_or(false);
                if changed {
                    let _ = self.fabric.change(&format!("{name} is {state}"), |st| {
                        st.record_mut(name)?.state = state;
                        Ok(())
                    });
                }
            }
            all &= ok;
        }
        if all {
            self.fabric.set_managed(&names, false);
        }
        all
    }

    fn progress(&self, event: WalkEvent) {
        info!(operation = self.id, ?event, "walk progress");
        self.fabric
            .progress(self.id, serde_json::to_value(&event).unwrap_or_default());
    }
}

/// Adds `count` instances of `spec` at the lowest free indexes, placed; returns their names.
fn add_instances(st: &mut State, spec: &RoleSpec, count: u32, fabric_fds: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut index = 0;
    while (names.len() as u32) < count {
        let name = format!("{}-{index}", spec.name);
        if st.instances.iter().all(|r| r.name != name) {
            let (ud, fd, host) = st.place(spec, index, &name, fabric_fds);
            st.instances.push(Record {
                role: spec.name.clone(),
                name: name.clone(),
                index,
                update_domain: ud,
                fault_domain: fd,
                host,
                incarnation: 0,
                disk_generation: 0,
                port: 0,
                agent: None,
                agent_pid: None,
                agent_start: None,
                state: AgentState::Starting,
                version: 1,
                role_starts_seen: 0,
                misses: 0,
                heartbeat_reboots: 0,
                managed: true,
            });
            names.push(name);
        }
        index += 1;
    }
    st.instances
        .sort_by(|a, b| (&a.role, a.index).cmp(&(&b.role, b.index)));
    names
}

fn validate_spec(spec: &RoleSpec) -> Result<(), FabricError> {
    let bad = |m: String| Err(FabricError::Invalid(m));
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return bad(format!(
            "expected a role name of letters, digits, '_', '.' or '-', found {:?}",
            spec.name
        ));
    }
    if spec.instances == 0 || spec.instances > rota_config::MAX_ROLE_INSTANCES {
        return bad(format!(
            "expected 1 to {} instances, found {}",
            rota_config::MAX_ROLE_INSTANCES,
            spec.instances
        ));
    }
    if spec.command.is_empty() {
        return bad("expected a command, found an empty one".into());
    }
    if !(1..=rota_config::MAX_UPDATE_DOMAINS).contains(&spec.update_domains) {
        return bad(format!(
            "expected 1 to 20 update domains, found {}",
            spec.update_domains
        ));
    }
    if !(1..=rota_config::MAX_FAULT_DOMAINS).contains(&spec.fault_domains) {
        return bad(format!(
            "expected 1 to 20 fault domains, found {}",
            spec.fault_domains
        ));
    }
    Ok(())
}

/// Fills a role command's placeholders; a program spelled `rota` becomes `rota_program`.
pub fn expand(
    command: &[String],
    rota_program: &Path,
    port: u16,
    instance: &str,
    role: &str,
    disk: &Path,
    base: &Path,
) -> Vec<String> {
    command
        .iter()
        .enumerate()
        .map(|(i, arg)| {
            if i == 0 && arg == "rota" {
                return rota_program.display().to_string();
            }
            arg.replace("{port}", &port.to_string())
                .replace("{instance}", instance)
                .replace("{role}", role)
                .replace("{disk}", &disk.display().to_string())
                .replace("{base}", &base.display().to_string())
        })
        .collect()
}

/// Waits for the agent of `incarnation` to write its file; fails early if the
/// agent process died.
async fn wait_agent_file(path: &Path, incarnation: u64, pid: u32) -> Result<SocketAddr, String> {
    let deadline = tokio::time::Instant::now() + AGENT_START_DEADLINE;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            if let Ok(file) = serde_json::from_slice::<AgentFile>(&bytes) {
                if file.incarnation == incarnation {
                    return Ok(file.agent);
                }
            }
        }
        if !os::pid_alive(pid) {
            return Err(format!(
                "the agent (pid {pid}) exited before it listened; see {}",
                path.with_file_name("agent.log").display()
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the agent (pid {pid}) did not write {} within {AGENT_START_DEADLINE:?}",
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_and_rota_is_the_binary() {
        let cmd: Vec<String> = [
            "rota",
            "demo-backend",
            "--listen",
            "127.0.0.1:{port}",
            "--name",
            "{instance}",
            "{role}:{disk}:{base}",
        ]
        .map(String::from)
        .to_vec();
        let out = expand(
            &cmd,
            Path::new("/bin/rota"),
            9001,
            "web-0",
            "web",
            Path::new("/d"),
            Path::new("/b"),
        );
        assert_eq!(
            out,
            [
                "/bin/rota",
                "demo-backend",
                "--listen",
                "127.0.0.1:9001",
                "--name",
                "web-0",
                "web:/d:/b"
            ]
        );
        let nginx: Vec<String> = ["nginx", "-g", "daemon off;"].map(String::from).to_vec();
        assert_eq!(
            expand(
                &nginx,
                Path::new("/bin/rota"),
                1,
                "a",
                "b",
                Path::new("/d"),
                Path::new("/b")
            ),
            nginx
        );
    }

    #[test]
    fn new_instances_take_the_lowest_free_index_and_are_placed() {
        let mut st = State::default();
        let spec = RoleSpec {
            name: "web".into(),
            instances: 5,
            command: vec!["x".into()],
            update_domains: 5,
            fault_domains: 2,
            base_image: None,
            health_path: None,
        };
        let names = add_instances(&mut st, &spec, 5, 2);
        assert_eq!(names, ["web-0", "web-1", "web-2", "web-3", "web-4"]);
        let uds: Vec<u32> = st.instances.iter().map(|r| r.update_domain).collect();
        assert_eq!(uds, [0, 1, 2, 3, 4]);
        let fd0 = st.instances.iter().filter(|r| r.fault_domain == 0).count();
        assert_eq!(fd0, 3);
        st.instances.retain(|r| r.name != "web-1");
        assert_eq!(add_instances(&mut st, &spec, 1, 2), ["web-1"]);
    }
}
