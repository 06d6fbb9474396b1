//! Glue between the fabric stub and the balancer: topology changes become pool membership, fabric routes join the admin API.
//!
//! Data flows one way (STYLE): the fabric publishes [`Topology`] versions on a
//! `watch` channel (in process: [`Fabric::topology`]; from a fabric in another
//! process: [`rota_fabric::topology::follow_file`] on its `topology.json`).
//! [`follow`] diffs each version against the last one applied and turns it
//! into pool joins and leaves through [`Membership`], which also starts and
//! stops the instances' probes.
//! When the stream stops (the fabric died), nothing is sent and the balancer
//! keeps its last pools (SPEC rotation rule 10).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use rota_fabric::{Fabric, Topology};
use rota_lb::admin::{AdminExtension, Reply};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::membership::{Instance, Membership};

/// One membership change of a role's pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Join (or update in place, e.g. a new port after a move).
    Join {
        role: String,
        instance: String,
        addr: SocketAddr,
        agent: Option<SocketAddr>,
    },
    /// Leave: drained, live connections go on.
    Leave { role: String, instance: String },
}

/// The members of every role in `topology`: (role, instance) → (addr,
/// agent, incarnation). A new incarnation (a reboot) re-joins, so its health
/// starts over. Instances being stopped are not members: they drain. An
/// instance whose agent has not started yet is not one either: nothing could
/// tell whether it is Ready, and Starting is not Ready.
fn members(
    topology: &Topology,
) -> BTreeMap<(String, String), (SocketAddr, Option<SocketAddr>, u64)> {
    topology
        .instances
        .iter()
        .filter(|i| i.is_member() && i.agent.is_some())
        .map(|i| {
            (
                (i.role.clone(), i.name.clone()),
                (i.addr, i.agent, i.incarnation),
            )
        })
        .collect()
}

/// The changes that take the pools from `old` to `new`.
pub fn diff(old: &Topology, new: &Topology) -> Vec<MemberChange> {
    let (before, after) = (members(old), members(new));
    let mut changes = Vec::new();
    for (role, instance) in before.keys().filter(|k| !after.contains_key(*k)) {
        changes.push(MemberChange::Leave {
            role: role.clone(),
            instance: instance.clone(),
        });
    }
    for ((role, instance), (addr, agent, incarnation)) in &after {
        if before.get(&(role.clone(), instance.clone())) != Some(&(*addr, *agent, *incarnation)) {
            changes.push(MemberChange::Join {
                role: role.clone(),
                instance: instance.clone(),
                addr: *addr,
                agent: *agent,
            });
        }
    }
    changes
}

/// Applies every topology version to the pools until `stop` fires or the
/// stream ends. A joining instance waits for its first good probe before it
/// gets traffic ("Starting" is not "Ready").
pub async fn follow(
    membership: Arc<Membership>,
    mut topology: watch::Receiver<Arc<Topology>>,
    stop: CancellationToken,
) {
    let mut applied = Arc::new(Topology::default());
    loop {
        let next = topology.borrow_and_update().clone();
        for change in diff(&applied, &next) {
            info!(?change, version = next.version, "fabric membership change");
            match change {
                MemberChange::Join {
                    role,
                    instance,
                    addr,
                    agent,
                } => {
                    // Each role instance has its own port: target_port does not apply.
                    let instance = Instance {
                        name: instance,
                        addr,
                        weight: 1,
                        agent,
                        own_port: true,
                    };
                    membership.join(&role, &instance, false);
                }
                MemberChange::Leave { role, instance } => membership.leave(&role, &instance),
            }
        }
        applied = next;
        tokio::select! {
            _ = stop.cancelled() => return,
            r = topology.changed() => if r.is_err() {
                // The fabric is gone: keep serving on the last topology (SPEC rotation rule 10).
                warn!(version = applied.version, "fabric topology stream ended; keeping the last topology");
                return;
            },
        }
    }
}

/// The fabric's routes (`/api/v1/fabric/...`) on the balancer's admin listener.
pub struct FabricAdmin(pub Fabric);

impl AdminExtension for FabricAdmin {
    fn handle<'a>(
        &'a self,
        method: &'a Method,
        path: &'a str,
        body: Bytes,
    ) -> Option<Pin<Box<dyn Future<Output = Reply> + Send + 'a>>> {
        if !path.starts_with(rota_fabric::api::PREFIX) {
            return None;
        }
        Some(Box::pin(async move {
            match rota_fabric::api::route(&self.0, method.as_str(), path, &body).await {
                Some((code, value)) => (
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    value,
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": format!("no route for {method} {path}")}),
                ),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_fabric::InstanceInfo;

    fn instance(name: &str, port: u16, stopping: bool) -> InstanceInfo {
        serde_json::from_value(serde_json::json!({
            "role": "web", "name": name, "addr": format!("127.0.0.1:{port}"), "agent": "127.0.0.1:1",
            "update_domain": 0, "fault_domain": 0, "host": "h", "incarnation": 1, "version": 1,
            "state": if stopping { "Stopping" } else { "Ready" },
        }))
        .unwrap()
    }

    #[test]
    fn joins_moves_and_leaves() {
        let t1 = Topology {
            version: 1,
            instances: vec![
                instance("web-0", 1000, false),
                instance("web-1", 1001, false),
            ],
        };
        let t2 = Topology {
            version: 2,
            instances: vec![
                instance("web-0", 2000, false),
                instance("web-1", 1001, true),
            ],
        };
        assert_eq!(diff(&Topology::default(), &t1).len(), 2);
        assert_eq!(
            diff(&t1, &t2),
            [
                MemberChange::Leave {
                    role: "web".into(),
                    instance: "web-1".into()
                },
                MemberChange::Join {
                    role: "web".into(),
                    instance: "web-0".into(),
                    addr: "127.0.0.1:2000".parse().unwrap(),
                    agent: Some("127.0.0.1:1".parse().unwrap()),
                },
            ]
        );
        assert!(diff(&t2, &t2).is_empty());
        // An instance whose agent is not up yet joins once the agent is known.
        let mut starting = t1.clone();
        starting.instances[1].agent = None;
        assert_eq!(diff(&Topology::default(), &starting).len(), 1);
        assert_eq!(diff(&starting, &t1).len(), 1);
    }
}
