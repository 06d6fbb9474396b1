//! One endpoint's pool as an immutable snapshot: members, their rotation state and the selection table.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use rota_config::Distribution;

use crate::maglev::{mix64, Maglev};
use crate::metrics::MemberMetrics;

/// One instance as an endpoint sees it. Shared by every snapshot it appears in
/// and by the connections it carries, so its counters outlive a rotation change.
pub struct Member {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub metrics: MemberMetrics,
}

impl Member {
    /// Live connections to this instance.
    #[inline]
    pub fn active(&self) -> i64 {
        self.metrics.active.get()
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

/// What the operator asked for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Enabled,
    Drained,
}

/// What the health input last said of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthState {
    /// Nothing probes this instance: it counts as healthy.
    Unprobed,
    /// Probed, but no verdict yet: out of rotation until the first one.
    Awaiting,
    /// Probed, no verdict yet, but in rotation meanwhile (present at startup).
    Assumed,
    Healthy,
    Unhealthy,
}

/// The latest health report for an instance, kept for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: HealthState,
    /// Probe kind, e.g. `http` or `guest-agent`; empty when unprobed.
    pub kind: String,
    /// The last attempt's result, e.g. `http 503` or `timeout after 2s`.
    pub last_result: String,
    pub last_success: Option<SystemTime>,
}

impl Health {
    pub fn unprobed() -> Health {
        Health {
            state: HealthState::Unprobed,
            kind: String::new(),
            last_result: String::new(),
            last_success: None,
        }
    }

    /// A probed instance before its first verdict.
    pub fn new(state: HealthState, kind: &str) -> Health {
        Health {
            state,
            kind: kind.to_owned(),
            last_result: String::new(),
            last_success: None,
        }
    }
}

/// A rotation change, kept per instance for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: SystemTime,
    pub in_rotation: bool,
    pub reason: String,
}

/// One member's full state in a snapshot.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub member: Arc<Member>,
    pub admin: AdminState,
    pub health: Health,
    pub in_rotation: bool,
    /// Why it is (or is not) in rotation, in words.
    pub reason: String,
}

/// The immutable state of one endpoint's pool. A change builds a new one and
/// swaps it in whole, so the accept path never sees members and table disagree.
#[derive(Debug)]
pub struct PoolSnapshot {
    /// Every current member, in join order.
    pub members: Vec<MemberView>,
    /// Removed members still carrying connections (drained, not cut).
    pub leaving: Vec<Arc<Member>>,
    /// Who gets new connections now: the in-rotation members, or under
    /// fail-open every member when none is in rotation.
    candidates: Box<[Arc<Member>]>,
    /// Maglev table over `candidates` (hash modes).
    table: Maglev,
    /// Weighted round-robin ring of indexes into `candidates`.
    ring: Box<[u32]>,
    /// True when fail-open is what put the candidates there.
    pub failing_open: bool,
    /// The Maglev table size, carried to the next snapshot.
    table_size: usize,
}

/// The addresses a flow is hashed on. Only TCP is proxied, so the protocol is implicit.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

const TCP: u64 = 6;

impl Flow {
    #[inline]
    pub fn hash(&self, mode: Distribution) -> u64 {
        let src = fold_ip(self.source.ip());
        let dst = fold_ip(self.destination.ip());
        match mode {
            Distribution::SourceIp => mix64(src ^ mix64(dst)),
            Distribution::SourceIpProtocol => mix64(src ^ mix64(dst ^ (TCP << 56))),
            // Round robin and least connections do not hash; five-tuple is the default.
            _ => {
                let ports =
                    (u64::from(self.source.port()) << 16) | u64::from(self.destination.port());
                mix64(src ^ mix64(dst ^ mix64(ports | (TCP << 32))))
            }
        }
    }
}

#[inline]
fn fold_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => {
            let b = u128::from(v6);
            mix64(b as u64) ^ ((b >> 64) as u64)
        }
    }
}

impl PoolSnapshot {
    /// Builds a snapshot; `candidates` are derived from `members` here, in one
    /// place. `table_size` is the previous snapshot's, so that the Maglev table
    /// keeps its size (and flows their instance) across rotation changes.
    pub fn build(
        members: Vec<MemberView>,
        leaving: Vec<Arc<Member>>,
        fail_open: bool,
        table_size: usize,
    ) -> PoolSnapshot {
        let mut candidates: Vec<Arc<Member>> = members
            .iter()
            .filter(|m| m.in_rotation)
            .map(|m| m.member.clone())
            .collect();
        let mut failing_open = false;
        if candidates.is_empty() && fail_open {
            candidates = members.iter().map(|m| m.member.clone()).collect();
            failing_open = !candidates.is_empty();
        }
        let total_weight: usize = members
            .iter()
            .map(|m| m.member.weight.max(1) as usize)
            .sum();
        let table_size = Maglev::size_for(total_weight, table_size);
        let table = Maglev::build(candidates.iter().map(|m| (&*m.name, m.weight)), table_size);
        let mut ring = Vec::new();
        // Interleave weights (a, b, a, b, b, …) rather than blocks, so a heavy
        // member's share is spread over the ring.
        let max_w = candidates.iter().map(|m| m.weight).max().unwrap_or(0);
        for round in 0..max_w {
            for (i, m) in candidates.iter().enumerate() {
                if m.weight > round {
                    ring.push(i as u32);
                }
            }
        }
        PoolSnapshot {
            members,
            leaving,
            candidates: candidates.into_boxed_slice(),
            table,
            ring: ring.into_boxed_slice(),
            failing_open,
            table_size,
        }
    }

    /// An empty pool.
    pub fn empty() -> PoolSnapshot {
        PoolSnapshot::build(Vec::new(), Vec::new(), false, 0)
    }

    /// The Maglev table size in use; pass it to the next [`PoolSnapshot::build`].
    pub fn table_size(&self) -> usize {
        self.table_size
    }

    /// Members that may receive new connections, in the order retries walk them.
    #[inline]
    pub fn candidates(&self) -> &[Arc<Member>] {
        &self.candidates
    }

    /// Picks the first candidate for a new connection; `None` means refuse.
    /// Retries walk on from the returned index (`(i + k) % len`).
    #[inline]
    pub fn pick(&self, mode: Distribution, flow: &Flow, turn: &AtomicUsize) -> Option<usize> {
        let n = self.candidates.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        match mode {
            Distribution::FiveTuple | Distribution::SourceIp | Distribution::SourceIpProtocol => {
                self.table.lookup(flow.hash(mode)).map(|i| i as usize)
            }
            Distribution::RoundRobin => {
                let t = turn.fetch_add(1, Ordering::Relaxed);
                Some(self.ring[t % self.ring.len()] as usize)
            }
            Distribution::LeastConnections => {
                Some(self.least_loaded(turn.fetch_add(1, Ordering::Relaxed)))
            }
        }
    }

    /// Least connections per unit of weight. Small pools are scanned whole,
    /// starting from a moving position so equal members share the ties. Large
    /// pools compare two members drawn at random ("power of two choices"),
    /// which keeps the pick O(1) and avoids sending a burst of new
    /// connections to the one emptiest member.
    #[inline]
    fn least_loaded(&self, turn: usize) -> usize {
        const SCAN_UP_TO: usize = 8;
        let n = self.candidates.len();
        // a is less loaded than b: active_a / weight_a < active_b / weight_b.
        let lighter = |a: usize, b: usize| {
            let (ma, mb) = (&self.candidates[a], &self.candidates[b]);
            let la = ma.active().max(0) as u64 * u64::from(mb.weight);
            let lb = mb.active().max(0) as u64 * u64::from(ma.weight);
            la < lb
        };
        if n <= SCAN_UP_TO {
            let start = turn % n;
            let mut best = start;
            for k in 1..n {
                let i = (start + k) % n;
                if lighter(i, best) {
                    best = i;
                }
            }
            best
        } else {
            let r = mix64(turn as u64);
            let a = (r % n as u64) as usize;
            let b = ((r >> 32) % (n as u64 - 1)) as usize;
            let b = if b >= a { b + 1 } else { b };
            if lighter(b, a) {
                b
            } else {
                a
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn views(n: usize, metrics: &Metrics) -> Vec<MemberView> {
        (0..n)
            .map(|i| MemberView {
                member: Arc::new(Member {
                    name: format!("m{i}").into(),
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    weight: 1,
                    metrics: metrics.member("t", &format!("m{i}")),
                }),
                admin: AdminState::Enabled,
                health: Health::unprobed(),
                in_rotation: true,
                reason: String::new(),
            })
            .collect()
    }

    #[test]
    fn least_connections_picks_the_emptiest_member() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        for n in [4usize, 20] {
            let snap = PoolSnapshot::build(views(n, &metrics), Vec::new(), false, 0);
            for (i, m) in snap.candidates().iter().enumerate() {
                m.metrics.active.set(if i == 2 { 0 } else { 5 });
            }
            let turn = AtomicUsize::new(0);
            let flow = Flow {
                source: "127.0.0.1:1".parse().unwrap(),
                destination: "127.0.0.1:2".parse().unwrap(),
            };
            let picks: Vec<usize> = (0..200)
                .map(|_| {
                    snap.pick(Distribution::LeastConnections, &flow, &turn)
                        .unwrap()
                })
                .collect();
            let to_empty = picks.iter().filter(|&&p| p == 2).count();
            if n <= 8 {
                assert_eq!(to_empty, 200, "a full scan always finds it");
            } else {
                // Two random choices find it whenever it is one of the two drawn.
                assert!(to_empty >= 200 * 2 / n / 2, "n={n}: {to_empty} of 200");
            }
            for m in snap.candidates() {
                m.metrics.active.set(0);
            }
        }
    }

    #[test]
    fn weighted_round_robin_follows_the_weights() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let mut v = views(2, &metrics);
        Arc::get_mut(&mut v[1].member).unwrap().weight = 3;
        let snap = PoolSnapshot::build(v, Vec::new(), false, 0);
        let turn = AtomicUsize::new(0);
        let flow = Flow {
            source: "127.0.0.1:1".parse().unwrap(),
            destination: "127.0.0.1:2".parse().unwrap(),
        };
        let heavy = (0..400)
            .filter(|_| snap.pick(Distribution::RoundRobin, &flow, &turn) == Some(1))
            .count();
        assert_eq!(heavy, 300);
    }

    #[test]
    fn fail_open_uses_every_member_only_when_none_is_in_rotation() {
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let mut v = views(3, &metrics);
        for m in &mut v {
            m.in_rotation = false;
        }
        let refusing = PoolSnapshot::build(v.clone(), Vec::new(), false, 0);
        assert!(refusing.candidates().is_empty());
        let open = PoolSnapshot::build(v.clone(), Vec::new(), true, 0);
        assert_eq!(open.candidates().len(), 3);
        assert!(open.failing_open);
        v[0].in_rotation = true;
        let one = PoolSnapshot::build(v, Vec::new(), true, 0);
        assert_eq!(one.candidates().len(), 1);
        assert!(!one.failing_open);
    }
}
