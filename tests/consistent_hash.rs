//! Hash modes move as few flows as possible when an instance leaves rotation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use rota_config::Distribution;
use rota_lb::metrics::Metrics;
use rota_lb::pool::{AdminState, Health, Member, MemberView};
use rota_lb::{Flow, PoolSnapshot};

fn snapshot(names: &[String], metrics: &Metrics, table_size: usize) -> PoolSnapshot {
    let views = names
        .iter()
        .enumerate()
        .map(|(i, n)| MemberView {
            member: Arc::new(Member {
                name: n.as_str().into(),
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 80),
                weight: 1,
                metrics: metrics.member("web", n),
            }),
            admin: AdminState::Enabled,
            health: Health::unprobed(),
            in_rotation: true,
            reason: String::new(),
        })
        .collect();
    PoolSnapshot::build(views, Vec::new(), false, table_size)
}

fn owner(s: &PoolSnapshot, mode: Distribution, flow: &Flow) -> Arc<str> {
    let turn = AtomicUsize::new(0);
    let i = s.pick(mode, flow, &turn).expect("a candidate");
    s.candidates()[i].name.clone()
}

#[test]
fn one_of_n_leaving_moves_at_most_one_nth_plus_two_percent() {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let dst: SocketAddr = "192.0.2.1:80".parse().unwrap();
    for n in [3usize, 5, 10] {
        let names: Vec<String> = (0..n).map(|i| format!("web-{i}")).collect();
        let before = snapshot(&names, &metrics, 0);
        let mut fewer = names.clone();
        fewer.remove(n / 2);
        // The rotation writer carries the table size from one snapshot to the next.
        let after = snapshot(&fewer, &metrics, before.table_size());
        for mode in [
            Distribution::FiveTuple,
            Distribution::SourceIp,
            Distribution::SourceIpProtocol,
        ] {
            let flows = 20_000u32;
            let mut moved = 0;
            for f in 0..flows {
                let source = SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + f * 7919)),
                    1024 + (f % 50_000) as u16,
                );
                let flow = Flow {
                    source,
                    destination: dst,
                };
                if owner(&before, mode, &flow) != owner(&after, mode, &flow) {
                    moved += 1;
                }
            }
            let share = f64::from(moved) / f64::from(flows);
            let bound = 1.0 / n as f64 + 0.02;
            eprintln!("{mode:?} n={n} moved {share:.4} bound {bound:.4}");
            assert!(
                share <= bound,
                "{mode:?}, n={n}: {share:.4} of flows moved, bound {bound:.4}"
            );
            // And it did move the departed instance's flows (about 1/n of them).
            assert!(
                share >= 1.0 / n as f64 - 0.03,
                "{mode:?}, n={n}: only {share:.4} moved"
            );
        }
    }
}
