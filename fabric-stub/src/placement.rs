//! Where instances go: update domains, fault domains and simulated hosts (pure functions).
//!
//! Rules:
//! - instance *i* of a role is in update domain *i mod n* (SPEC fabric rule 1);
//! - it goes to the fault domain (among the role's first `fault_domains`) that
//!   holds the fewest of the role's instances, lowest number first. So no fault
//!   domain holds more than ⌈N/2⌉ of N instances over two domains (exactly half
//!   when N is even; with an odd count one domain must hold one more), and with
//!   two or more instances at least two domains are used;
//! - within the fault domain, it goes to a healthy host that already runs the
//!   role's instances of the *same* update domain, else to a host that runs none
//!   of the role's instances, else to a new host. A host therefore never holds
//!   two update domains of one role, which is what lets a host update reboot
//!   hosts one at a time without taking two update domains of a role down.
//! - a fault domain whose hosts are all failed takes nothing; if all of the
//!   role's domains are down, the least loaded healthy domain of the fabric is used.

use serde::{Deserialize, Serialize};

/// A simulated host as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSlot {
    pub name: String,
    pub fault_domain: u32,
    pub healthy: bool,
}

/// An instance already placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub role: String,
    pub update_domain: u32,
    pub fault_domain: u32,
    pub host: String,
}

/// Where a new instance goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub update_domain: u32,
    pub fault_domain: u32,
    /// An existing host, or `None`: create a new one in `fault_domain`.
    pub host: Option<String>,
}

/// The update domain of instance `index` of a role with `update_domains` domains.
pub fn update_domain(index: u32, update_domains: u32) -> u32 {
    index % update_domains.max(1)
}

/// Chooses a place for instance `index` of `role`. `placed` lists every other
/// instance of the service (the one being placed is not in it); `fabric_fds`
/// is the fabric's fault-domain count.
pub fn place(
    role: &str,
    index: u32,
    update_domains: u32,
    role_fds: u32,
    fabric_fds: u32,
    hosts: &[HostSlot],
    placed: &[Placed],
) -> Placement {
    let ud = update_domain(index, update_domains);
    let down = |fd: u32| {
        let mut in_fd = hosts.iter().filter(|h| h.fault_domain == fd).peekable();
        in_fd.peek().is_some() && in_fd.all(|h| !h.healthy)
    };
    let load = |fd: u32| {
        placed
            .iter()
            .filter(|p| p.role == role && p.fault_domain == fd)
            .count()
    };
    let pick = |fds: &mut dyn Iterator<Item = u32>| {
        fds.filter(|fd| !down(*fd))
            .min_by_key(|fd| (load(*fd), *fd))
    };
    let role_fds = role_fds.clamp(1, fabric_fds.max(1));
    let fd = pick(&mut (0..role_fds))
        .or_else(|| pick(&mut (0..fabric_fds.max(1))))
        .unwrap_or(0);

    let healthy: Vec<&HostSlot> = hosts
        .iter()
        .filter(|h| h.healthy && h.fault_domain == fd)
        .collect();
    let on = |host: &str| -> Vec<&Placed> { placed.iter().filter(|p| p.host == host).collect() };
    let same_ud = healthy.iter().find(|h| {
        on(&h.name)
            .iter()
            .any(|p| p.role == role && p.update_domain == ud)
    });
    let free_of_role = || {
        healthy
            .iter()
            .filter(|h| !on(&h.name).iter().any(|p| p.role == role))
            .min_by_key(|h| (on(&h.name).len(), h.name.clone()))
    };
    let host = same_ud.or_else(free_of_role).map(|h| h.name.clone());
    Placement {
        update_domain: ud,
        fault_domain: fd,
        host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn hosts(fds: u32, per: u32) -> Vec<HostSlot> {
        (0..fds)
            .flat_map(|fd| {
                (0..per).map(move |h| HostSlot {
                    name: format!("fd{fd}-host{h}"),
                    fault_domain: fd,
                    healthy: true,
                })
            })
            .collect()
    }

    /// Places `n` instances of `role` the way a deployment does.
    fn deploy(
        role: &str,
        n: u32,
        uds: u32,
        fds: u32,
        hosts: &mut Vec<HostSlot>,
        placed: &mut Vec<Placed>,
    ) {
        for i in 0..n {
            let p = place(role, i, uds, fds, fds, hosts, placed);
            let host = p.host.unwrap_or_else(|| {
                let name = format!("fd{}-extra{}", p.fault_domain, hosts.len());
                hosts.push(HostSlot {
                    name: name.clone(),
                    fault_domain: p.fault_domain,
                    healthy: true,
                });
                name
            });
            placed.push(Placed {
                role: role.into(),
                update_domain: p.update_domain,
                fault_domain: p.fault_domain,
                host,
            });
        }
    }

    /// No host holds instances of two update domains (of the instances given).
    fn assert_one_update_domain_per_host<'a>(placed: impl Iterator<Item = &'a Placed>, what: &str) {
        let mut uds_on_host: HashMap<&str, HashSet<u32>> = HashMap::new();
        for p in placed {
            uds_on_host
                .entry(&p.host)
                .or_default()
                .insert(p.update_domain);
        }
        assert!(
            uds_on_host.values().all(|s| s.len() == 1),
            "{what}: {uds_on_host:?}"
        );
    }

    #[test]
    fn update_domain_is_index_mod_n() {
        assert_eq!(
            (0..7).map(|i| update_domain(i, 5)).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 0, 1]
        );
        assert_eq!(update_domain(19, 20), 19);
    }

    #[test]
    fn fault_domains_are_balanced_and_hosts_hold_one_update_domain_per_role() {
        for n in 1..=40 {
            for (uds, fds) in [(5, 2), (3, 2), (20, 3), (1, 2), (5, 5)] {
                let mut hs = hosts(fds, 3);
                let mut placed = Vec::new();
                deploy("web", n, uds, fds, &mut hs, &mut placed);
                let mut per_fd: HashMap<u32, u32> = HashMap::new();
                for p in &placed {
                    *per_fd.entry(p.fault_domain).or_default() += 1;
                }
                let max = per_fd.values().max().copied().unwrap_or(0);
                assert!(
                    max <= n.div_ceil(fds.min(n)),
                    "n={n} uds={uds} fds={fds}: {per_fd:?}"
                );
                if n >= 2 && fds >= 2 {
                    assert!(
                        per_fd.len() >= 2,
                        "n={n}: one fault domain holds everything"
                    );
                    assert!(max <= n.div_ceil(2), "n={n}: {per_fd:?} over half");
                }
                assert_one_update_domain_per_host(placed.iter(), "a host holds two UDs");
            }
        }
    }

    #[test]
    fn a_failed_fault_domain_takes_nothing() {
        let mut hs = hosts(2, 2);
        for h in hs.iter_mut().filter(|h| h.fault_domain == 0) {
            h.healthy = false;
        }
        let mut placed = Vec::new();
        deploy("web", 4, 5, 2, &mut hs, &mut placed);
        assert!(placed.iter().all(|p| p.fault_domain == 1), "{placed:?}");
    }

    #[test]
    fn two_roles_share_hosts_without_mixing_their_update_domains() {
        let mut hs = hosts(2, 2);
        let mut placed = Vec::new();
        deploy("web", 5, 5, 2, &mut hs, &mut placed);
        deploy("worker", 3, 3, 2, &mut hs, &mut placed);
        for role in ["web", "worker"] {
            assert_one_update_domain_per_host(placed.iter().filter(|p| p.role == role), role);
        }
    }
}
