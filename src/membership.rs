//! Membership: an instance joining or leaving a pool becomes balancer joins/leaves and probe targets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rota_config::{Config, ProbeProtocol};
use rota_lb::{Probing, Rotation, RotationInput};
use rota_probe::{ProbeSpec, Prober, Report, Target, TargetKey};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// One endpoint's view of pools: which pool feeds it and how it probes.
struct EndpointPlan {
    name: Arc<str>,
    pool: String,
    target_port: Option<u16>,
    probe: Option<ProbePlan>,
}

/// The endpoint's LoadBalancerProbe (or explicit guest-agent timing).
struct ProbePlan {
    spec: Arc<ProbeSpec>,
    protocol: ProbeProtocol,
    port: Option<u16>,
}

/// An instance as a pool source (static config, the fabric) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    /// Where clients are proxied to.
    pub addr: SocketAddr,
    pub weight: u32,
    /// Guest-agent status address, if the instance has an agent.
    pub agent: Option<SocketAddr>,
    /// The instance has its own port for the endpoint (fabric roles): the
    /// endpoint's `target_port` does not replace it.
    pub own_port: bool,
}

/// Turns pool membership into balancer membership and probe targets, so the
/// balancer never needs to know how health is decided.
pub struct Membership {
    rotation: Arc<Rotation>,
    prober: Prober,
    plans: Vec<EndpointPlan>,
    agent_default: Arc<ProbeSpec>,
    /// Probe targets per (pool, instance), to remove them on leave.
    targets: Mutex<HashMap<(String, String), Vec<TargetKey>>>,
}

impl Membership {
    /// Builds the probe specs of every endpoint and starts the task that
    /// applies probe reports to rotation. Call within the control runtime.
    pub fn new(
        config: &Config,
        rotation: Arc<Rotation>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Membership> {
        let (tx, rx) = mpsc::unbounded_channel();
        let prober = Prober::new(tx, registry)?;
        let mut plans = Vec::new();
        for ep in &config.endpoints {
            let probe = match &ep.probe {
                Some(p) => Some(ProbePlan {
                    spec: Arc::new(
                        ProbeSpec::from_config(p)
                            .with_context(|| format!("endpoint {}: probe", ep.name))?,
                    ),
                    protocol: p.protocol,
                    port: p.port,
                }),
                None => None,
            };
            plans.push(EndpointPlan {
                name: ep.name.as_str().into(),
                pool: ep.pool.clone(),
                target_port: ep.target_port,
                probe,
            });
        }
        tokio::spawn(apply_reports(rx, rotation.clone()));
        Ok(Membership {
            rotation,
            prober,
            plans,
            agent_default: Arc::new(ProbeSpec::guest_agent_default()),
            targets: Mutex::new(HashMap::new()),
        })
    }

    /// An instance joins `pool`: it joins every endpoint fed by that pool and
    /// gets a probe per endpoint. `at_startup` instances stay in rotation
    /// until their first verdict; later ones wait for their first success.
    pub fn join(&self, pool: &str, instance: &Instance, at_startup: bool) {
        let mut keys = Vec::new();
        for plan in self.plans.iter().filter(|p| p.pool == pool) {
            let mut addr = instance.addr;
            if let (Some(port), false) = (plan.target_port, instance.own_port) {
                addr.set_port(port);
            }
            let target = self.probe_target(plan, instance, addr);
            let probing = match &target {
                None => Probing::None,
                Some((_, spec)) if at_startup => {
                    Probing::AssumeHealthy(spec.kind_name().to_owned())
                }
                Some((_, spec)) => Probing::AwaitFirst(spec.kind_name().to_owned()),
            };
            let input = RotationInput::Join {
                endpoint: plan.name.clone(),
                instance: instance.name.as_str().into(),
                addr,
                weight: instance.weight,
                probing,
            };
            if let Err(e) = self.rotation.apply(input) {
                warn!(endpoint = %plan.name, instance = %instance.name, error = %e, "join failed");
                continue;
            }
            if let Some((probe_addr, spec)) = target {
                let key = TargetKey::new(plan.name.clone(), instance.name.as_str());
                self.prober.add(Target {
                    key: key.clone(),
                    addr: probe_addr,
                    spec,
                });
                keys.push(key);
            }
        }
        let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        targets.insert((pool.to_owned(), instance.name.clone()), keys);
    }

    /// An instance leaves `pool`: its probes stop and every endpoint drains it.
    pub fn leave(&self, pool: &str, instance: &str) {
        let keys = {
            let mut targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
            targets
                .remove(&(pool.to_owned(), instance.to_owned()))
                .unwrap_or_default()
        };
        for key in &keys {
            self.prober.remove(key);
        }
        for plan in self.plans.iter().filter(|p| p.pool == pool) {
            let input = RotationInput::Leave {
                endpoint: plan.name.clone(),
                instance: instance.into(),
            };
            if let Err(e) = self.rotation.apply(input) {
                debug!(endpoint = %plan.name, instance, error = %e, "leave of an unknown instance");
            }
        }
    }

    /// Where and how an instance is probed for one endpoint, or `None` when
    /// nothing can probe it (no probe configured and no guest agent).
    fn probe_target(
        &self,
        plan: &EndpointPlan,
        instance: &Instance,
        member_addr: SocketAddr,
    ) -> Option<(SocketAddr, Arc<ProbeSpec>)> {
        match &plan.probe {
            // SPEC rotation rule 1: an endpoint with a LoadBalancerProbe uses that probe alone.
            Some(p) if p.protocol != ProbeProtocol::GuestAgent => {
                let addr = match (p.port, instance.own_port) {
                    (Some(port), false) => SocketAddr::new(member_addr.ip(), port),
                    _ => member_addr,
                };
                Some((addr, p.spec.clone()))
            }
            // Explicit guest-agent timing: the instance's agent, or the probe port.
            Some(p) => match (instance.agent, p.port) {
                (Some(agent), _) => Some((agent, p.spec.clone())),
                (None, Some(port)) => {
                    Some((SocketAddr::new(member_addr.ip(), port), p.spec.clone()))
                }
                (None, None) => {
                    warn!(endpoint = %plan.name, instance = %instance.name, "guest-agent probe but no agent address: not probed");
                    None
                }
            },
            // No LoadBalancerProbe: ask the guest agent, if the instance has one.
            None => instance
                .agent
                .map(|agent| (agent, self.agent_default.clone())),
        }
    }

    pub fn shutdown(&self) {
        self.prober.shutdown();
    }
}

/// Applies every probe report to rotation, in order.
async fn apply_reports(mut rx: mpsc::UnboundedReceiver<Report>, rotation: Arc<Rotation>) {
    while let Some(report) = rx.recv().await {
        let input = RotationInput::Health {
            endpoint: report.key.endpoint.clone(),
            instance: report.key.instance.clone(),
            healthy: report.healthy,
            kind: report.kind.to_owned(),
            last_result: report.reason,
            last_success: report.last_success,
        };
        // A report can arrive just after its instance left: nothing to do.
        if let Err(e) = rotation.apply(input) {
            debug!(error = %e, "probe report for an instance that left");
        }
    }
}
