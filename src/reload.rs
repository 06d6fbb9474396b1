//! Reload: a new config file applied to a running rota without dropping a connection.
//!
//! What a reload changes live: the backends of every `[[pool]]` (added ones
//! join and, if probed, wait for their first success; removed ones drain;
//! a changed address, weight or agent re-joins, the old member draining).
//! Everything else (listeners, endpoint settings, probes, roles, the fabric,
//! the admin address, workers) needs a restart: a reload that changes it
//! applies the pools, keeps the running settings and says what was not applied.
//! A config with errors changes nothing.

use std::collections::BTreeMap;

use rota_config::{BackendConfig, Config};

use crate::membership::{Instance, Membership};

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// `pool/instance` joined or re-joined.
    pub joined: Vec<String>,
    /// `pool/instance` left (draining).
    pub left: Vec<String>,
    /// Settings that differ from the running ones and need a restart.
    pub not_applied: Vec<&'static str>,
}

fn instance(b: &BackendConfig) -> Instance {
    Instance {
        name: b.name.clone(),
        addr: b.address,
        weight: b.weight,
        agent: b.agent,
        own_port: false,
    }
}

/// Brings the pools of `running` to those of `next` through `membership`,
/// and records in `running` what was applied.
pub fn apply(running: &mut Config, next: &Config, membership: &Membership) -> Applied {
    let mut applied = Applied::default();
    let index = |c: &Config| -> BTreeMap<(String, String), BackendConfig> {
        c.pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(move |b| ((p.name.clone(), b.name.clone()), b.clone()))
            })
            .collect()
    };
    let (before, after) = (index(running), index(next));
    for (pool, name) in before.keys().filter(|k| !after.contains_key(*k)) {
        membership.leave(pool, name);
        applied.left.push(format!("{pool}/{name}"));
    }
    for ((pool, name), backend) in &after {
        if before.get(&(pool.clone(), name.clone())) != Some(backend) {
            membership.join(pool, &instance(backend), false);
            applied.joined.push(format!("{pool}/{name}"));
        }
    }
    running.pools = next.pools.clone();

    let checks: [(&'static str, bool); 6] = [
        ("endpoints", running.endpoints != next.endpoints),
        ("admin", running.admin != next.admin),
        ("workers", running.workers != next.workers),
        (
            "shutdown_grace",
            running.shutdown_grace != next.shutdown_grace,
        ),
        ("roles", running.roles != next.roles),
        ("fabric", running.fabric != next.fabric),
    ];
    applied.not_applied = checks
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(what, _)| *what)
        .collect();
    applied
}
