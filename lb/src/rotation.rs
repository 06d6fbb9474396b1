//! Rotation: the single writer of every pool snapshot, driven by one input type.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tracing::{info, warn};

use crate::endpoint::Endpoint;
use crate::metrics::Metrics;
use crate::pool::{AdminState, Health, HealthState, Member, MemberView, PoolSnapshot, Transition};

/// Transitions kept per instance for the admin API.
const TRANSITIONS_KEPT: usize = 16;

/// Everything that can change who is in rotation. Static config, the admin
/// API, probes and the fabric all speak this one type.
#[derive(Debug, Clone)]
pub enum RotationInput {
    /// An instance joins an endpoint's pool (or is updated in place if present).
    Join {
        endpoint: Arc<str>,
        instance: Arc<str>,
        addr: SocketAddr,
        weight: u32,
        /// Whether a probe will report on it, and what to assume until it does.
        probing: Probing,
    },
    /// An instance leaves: no new connections, live ones drain.
    Leave {
        endpoint: Arc<str>,
        instance: Arc<str>,
    },
    /// A health verdict from a probe.
    Health {
        endpoint: Arc<str>,
        instance: Arc<str>,
        healthy: bool,
        kind: String,
        last_result: String,
        last_success: Option<SystemTime>,
    },
    /// An operator's drain or enable; `endpoint: None` means every endpoint.
    Admin {
        endpoint: Option<Arc<str>>,
        instance: Arc<str>,
        action: AdminAction,
    },
}

/// How a joining instance's health is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probing {
    /// Nothing probes it: it counts as healthy.
    None,
    /// A probe of this kind will report; out of rotation until its first success.
    AwaitFirst(String),
    /// A probe of this kind will report; in rotation until its first verdict.
    AssumeHealthy(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAction {
    Drain,
    Enable,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    #[error("no endpoint named {0:?}")]
    UnknownEndpoint(String),
    #[error("no instance named {0:?}")]
    UnknownInstance(String),
}

struct MemberEntry {
    member: Arc<Member>,
    admin: AdminState,
    health: Health,
    in_rotation: bool,
    /// Why it is (or is not) in rotation, as last published.
    reason: String,
    transitions: Vec<Transition>,
}

struct EndpointState {
    endpoint: Arc<Endpoint>,
    members: Vec<MemberEntry>,
    leaving: Vec<Arc<Member>>,
}

/// Owns the mutable rotation state of every endpoint and publishes snapshots.
///
/// The mutex is taken only by control-plane callers (admin, probes, fabric);
/// the data plane reads the published `ArcSwap` snapshots and never locks.
pub struct Rotation {
    state: Mutex<HashMap<Arc<str>, EndpointState>>,
    metrics: Metrics,
}

impl Rotation {
    pub fn new(endpoints: &[Arc<Endpoint>], metrics: Metrics) -> Rotation {
        let state = endpoints
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    EndpointState {
                        endpoint: e.clone(),
                        members: Vec::new(),
                        leaving: Vec::new(),
                    },
                )
            })
            .collect();
        Rotation {
            state: Mutex::new(state),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, EndpointState>> {
        // A panic while holding the lock leaves consistent data behind (every
        // change is applied then published), so poisoning is not fatal.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one input and republishes the affected snapshots. Returns how
    /// many instances it touched.
    pub fn apply(&self, input: RotationInput) -> Result<usize, RotationError> {
        let mut state = self.lock();
        let now = SystemTime::now();
        match input {
            RotationInput::Join {
                endpoint,
                instance,
                addr,
                weight,
                probing,
            } => {
                let es = state
                    .get_mut(&endpoint)
                    .ok_or_else(|| RotationError::UnknownEndpoint(endpoint.to_string()))?;
                let health = match &probing {
                    Probing::None => Health::unprobed(),
                    Probing::AwaitFirst(kind) => Health::new(HealthState::Awaiting, kind),
                    Probing::AssumeHealthy(kind) => Health::new(HealthState::Assumed, kind),
                };
                if let Some(pos) = es.members.iter().position(|m| m.member.name == instance) {
                    let old = &mut es.members[pos];
                    if old.member.addr == addr && old.member.weight == weight {
                        // Same place, new incarnation (a reboot): its health
                        // starts over; its live connections are untouched.
                        if matches!(probing, Probing::AwaitFirst(_)) {
                            old.health = health;
                            self.publish(es, now);
                        }
                        return Ok(1);
                    }
                    // Same name, new address (a move): the old member drains.
                    let old = es.members.remove(pos);
                    es.leaving.push(old.member);
                }
                let member = Arc::new(Member {
                    name: instance.clone(),
                    addr,
                    weight: weight.max(1),
                    metrics: self.metrics.member(&endpoint, &instance),
                });
                info!(endpoint = %endpoint, instance = %instance, %addr, "instance joined");
                es.members.push(MemberEntry {
                    member,
                    admin: AdminState::Enabled,
                    health,
                    in_rotation: false,
                    reason: String::new(),
                    transitions: Vec::new(),
                });
                self.publish(es, now);
                Ok(1)
            }
            RotationInput::Leave { endpoint, instance } => {
                let es = state
                    .get_mut(&endpoint)
                    .ok_or_else(|| RotationError::UnknownEndpoint(endpoint.to_string()))?;
                let pos = es
                    .members
                    .iter()
                    .position(|m| m.member.name == instance)
                    .ok_or_else(|| RotationError::UnknownInstance(instance.to_string()))?;
                let gone = es.members.remove(pos);
                gone.member.metrics.in_rotation.set(0);
                info!(
                    endpoint = %endpoint,
                    instance = %instance,
                    live_connections = gone.member.active(),
                    "instance left; draining its live connections"
                );
                es.leaving.push(gone.member);
                self.publish(es, now);
                Ok(1)
            }
            RotationInput::Health {
                endpoint,
                instance,
                healthy,
                kind,
                last_result,
                last_success,
            } => {
                let es = state
                    .get_mut(&endpoint)
                    .ok_or_else(|| RotationError::UnknownEndpoint(endpoint.to_string()))?;
                let entry = es
                    .members
                    .iter_mut()
                    .find(|m| m.member.name == instance)
                    .ok_or_else(|| RotationError::UnknownInstance(instance.to_string()))?;
                let state = if healthy {
                    HealthState::Healthy
                } else {
                    HealthState::Unhealthy
                };
                let changed = entry.health.state != state;
                entry.health = Health {
                    state,
                    kind,
                    last_result,
                    last_success,
                };
                // An unchanged verdict only refreshes the detail the admin API
                // reads from here; the data plane's snapshot stays as it is.
                if changed {
                    self.publish(es, now);
                }
                Ok(1)
            }
            RotationInput::Admin {
                endpoint,
                instance,
                action,
            } => {
                let admin = match action {
                    AdminAction::Drain => AdminState::Drained,
                    AdminAction::Enable => AdminState::Enabled,
                };
                if let Some(ep) = &endpoint {
                    if !state.contains_key(ep) {
                        return Err(RotationError::UnknownEndpoint(ep.to_string()));
                    }
                }
                let mut touched = 0;
                for (name, es) in state.iter_mut() {
                    if endpoint.as_ref().is_some_and(|e| e != name) {
                        continue;
                    }
                    let mut hit = false;
                    for m in es.members.iter_mut().filter(|m| m.member.name == instance) {
                        m.admin = admin;
                        hit = true;
                        touched += 1;
                    }
                    if hit {
                        info!(endpoint = %name, instance = %instance, ?action, "operator action");
                        self.publish(es, now);
                    }
                }
                if touched == 0 {
                    return Err(RotationError::UnknownInstance(instance.to_string()));
                }
                Ok(touched)
            }
        }
    }

    /// Forgets leaving members whose last connection has closed, and their metric series.
    pub fn tidy(&self) {
        let mut state = self.lock();
        let now = SystemTime::now();
        for es in state.values_mut() {
            if es.leaving.iter().any(|m| m.active() <= 0) {
                self.publish(es, now);
            }
        }
    }

    /// Recomputes rotation for one endpoint and swaps in a new snapshot.
    fn publish(&self, es: &mut EndpointState, now: SystemTime) {
        let ep = &es.endpoint;
        // Removed members are listed until their last connection closes; then
        // their series go too, unless the name is back as a current member.
        let mut departed = Vec::new();
        es.leaving.retain(|m| {
            let live = m.active() > 0;
            if !live {
                info!(endpoint = %ep.name, instance = %m.name, "drained instance closed its last connection");
                departed.push(m.name.clone());
            }
            live
        });
        for name in departed {
            let reused = es.members.iter().any(|m| m.member.name == name)
                || es.leaving.iter().any(|m| m.name == name);
            if !reused {
                self.metrics.forget_member(&ep.name, &name);
            }
        }
        // SPEC rotation rule 4: a role with exactly one instance is always in rotation.
        let single = es.members.len() == 1;
        let mut views = Vec::with_capacity(es.members.len());
        for m in es.members.iter_mut() {
            let (eligible, why) = eligibility(m.admin, &m.health);
            let (in_rotation, reason) = if single && !eligible {
                (true, format!("single instance, always in rotation ({why})"))
            } else {
                (eligible, why)
            };
            if in_rotation != m.in_rotation || m.transitions.is_empty() {
                let first = m.transitions.is_empty();
                m.in_rotation = in_rotation;
                m.member.metrics.in_rotation.set(i64::from(in_rotation));
                if !first {
                    if in_rotation {
                        m.member.metrics.transitions_in.inc();
                    } else {
                        m.member.metrics.transitions_out.inc();
                    }
                    info!(endpoint = %ep.name, instance = %m.member.name, in_rotation, %reason, "rotation changed");
                }
                if m.transitions.len() == TRANSITIONS_KEPT {
                    m.transitions.remove(0);
                }
                m.transitions.push(Transition {
                    at: now,
                    in_rotation,
                    reason: reason.clone(),
                });
            }
            m.reason.clone_from(&reason);
            views.push(MemberView {
                member: m.member.clone(),
                admin: m.admin,
                health: m.health.clone(),
                in_rotation,
                reason,
            });
        }
        let table_size = ep.pool.load().table_size();
        let snapshot = PoolSnapshot::build(views, es.leaving.clone(), ep.fail_open, table_size);
        if snapshot.candidates().is_empty() && !snapshot.members.is_empty() {
            warn!(endpoint = %ep.name, members = snapshot.members.len(), "no instance in rotation: new connections are refused");
        }
        ep.pool.store(Arc::new(snapshot));
    }
}

/// Whether an instance may take new connections, setting the single-instance
/// rule aside, and the reason in words.
fn eligibility(admin: AdminState, health: &Health) -> (bool, String) {
    if admin == AdminState::Drained {
        return (false, "drained by operator".to_owned());
    }
    match health.state {
        HealthState::Unprobed => (true, "not probed".to_owned()),
        HealthState::Awaiting => (false, format!("awaiting first {} probe", health.kind)),
        HealthState::Assumed => (
            true,
            format!("assumed healthy until the first {} probe", health.kind),
        ),
        HealthState::Healthy => (true, format!("{}: {}", health.kind, health.last_result)),
        HealthState::Unhealthy => (false, format!("{}: {}", health.kind, health.last_result)),
    }
}

/// The admin API's view of one endpoint.
#[derive(Debug, serde::Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub listen: String,
    pub distribution: &'static str,
    pub all_down: &'static str,
    pub active_connections: i64,
    /// True when no instance is in rotation and fail-open is spreading connections anyway.
    pub failing_open: bool,
    pub instances: Vec<InstanceStatus>,
    /// Removed instances still carrying connections.
    pub leaving: Vec<LeavingStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub in_rotation: bool,
    pub reason: String,
    pub admin: &'static str,
    pub health: HealthStatus,
    pub active_connections: i64,
    pub connections_total: u64,
    pub transitions: Vec<TransitionStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct HealthStatus {
    /// `unprobed`, `awaiting`, `assumed`, `healthy` or `unhealthy`.
    pub state: &'static str,
    pub probe: String,
    pub last_result: String,
    pub last_success_unix_ms: Option<u64>,
}

#[derive(Debug, serde::Serialize)]
pub struct TransitionStatus {
    pub at_unix_ms: u64,
    pub in_rotation: bool,
    pub reason: String,
}

#[derive(Debug, serde::Serialize)]
pub struct LeavingStatus {
    pub name: String,
    pub address: String,
    pub active_connections: i64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Rotation {
    /// Every endpoint's state, for the admin API, in endpoint order of `order`.
    pub fn describe(&self, order: &[Arc<Endpoint>]) -> Vec<EndpointStatus> {
        let state = self.lock();
        order
            .iter()
            .filter_map(|ep| state.get(&ep.name))
            .map(|es| {
                let ep = &es.endpoint;
                let snapshot = ep.pool.load();
                EndpointStatus {
                    name: ep.name.to_string(),
                    listen: ep.listen.to_string(),
                    distribution: ep.distribution.as_str(),
                    all_down: if ep.fail_open { "fail-open" } else { "refuse" },
                    active_connections: ep.metrics.active.get(),
                    failing_open: snapshot.failing_open,
                    instances: es
                        .members
                        .iter()
                        .map(|m| InstanceStatus {
                            name: m.member.name.to_string(),
                            address: m.member.addr.to_string(),
                            weight: m.member.weight,
                            in_rotation: m.in_rotation,
                            reason: m.reason.clone(),
                            admin: match m.admin {
                                AdminState::Enabled => "enabled",
                                AdminState::Drained => "drained",
                            },
                            health: HealthStatus {
                                state: match m.health.state {
                                    HealthState::Unprobed => "unprobed",
                                    HealthState::Awaiting => "awaiting",
                                    HealthState::Assumed => "assumed",
                                    HealthState::Healthy => "healthy",
                                    HealthState::Unhealthy => "unhealthy",
                                },
                                probe: m.health.kind.clone(),
                                last_result: m.health.last_result.clone(),
                                last_success_unix_ms: m.health.last_success.map(unix_ms),
                            },
                            active_connections: m.member.active(),
                            connections_total: m.member.metrics.connections.get(),
                            transitions: m
                                .transitions
                                .iter()
                                .map(|t| TransitionStatus {
                                    at_unix_ms: unix_ms(t.at),
                                    in_rotation: t.in_rotation,
                                    reason: t.reason.clone(),
                                })
                                .collect(),
                        })
                        .collect(),
                    leaving: es
                        .leaving
                        .iter()
                        .filter(|m| m.active() > 0)
                        .map(|m| LeavingStatus {
                            name: m.name.to_string(),
                            address: m.addr.to_string(),
                            active_connections: m.active(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
