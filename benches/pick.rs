//! Informs the hot-path design: the pick for every distribution mode must stay
//! within tens of nanoseconds, a snapshot load must stay cheap while the
//! rotation writer swaps snapshots, and a Maglev rebuild (control plane) must
//! stay well under a probe interval for large pools.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rota_config::Distribution;
use rota_lb::maglev::Maglev;
use rota_lb::metrics::Metrics;
use rota_lb::pool::{AdminState, Health, Member, MemberView};
use rota_lb::{Flow, PoolSnapshot};

fn snapshot(n: usize, metrics: &Metrics) -> PoolSnapshot {
    let views = (0..n)
        .map(|i| {
            let name = format!("web-{i}");
            MemberView {
                member: Arc::new(Member {
                    name: name.as_str().into(),
                    addr: SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8)),
                        80,
                    ),
                    weight: 1,
                    metrics: metrics.member("bench", &name),
                }),
                admin: AdminState::Enabled,
                health: Health::unprobed(),
                in_rotation: true,
                reason: String::new(),
            }
        })
        .collect();
    PoolSnapshot::build(views, Vec::new(), false, 0)
}

fn pick(c: &mut Criterion) {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 100] {
        let snap = snapshot(n, &metrics);
        let turn = AtomicUsize::new(0);
        let flows: Vec<Flow> = (0..1024u32)
            .map(|i| Flow {
                source: SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 31)),
                    1024 + i as u16,
                ),
                destination: "127.0.0.1:8080".parse().unwrap(),
            })
            .collect();
        for mode in Distribution::ALL {
            group.bench_with_input(BenchmarkId::new(mode.as_str(), n), &mode, |b, &mode| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(snap.pick(mode, black_box(&flows[i]), &turn))
                })
            });
        }
    }
    group.finish();
}

fn snapshot_load(c: &mut Criterion) {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let pool = Arc::new(ArcSwap::from_pointee(snapshot(3, &metrics)));
    let mut group = c.benchmark_group("snapshot_load");
    group.bench_function("quiet", |b| b.iter(|| black_box(pool.load_full())));
    // A writer swapping snapshots as fast as it can: far more churn than probes cause.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        let fresh = Arc::new(snapshot(3, &metrics));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pool.store(fresh.clone());
            }
        })
    };
    group.bench_function("while_swapping", |b| b.iter(|| black_box(pool.load_full())));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build");
    group.sample_size(10);
    for n in [10usize, 100, 1000] {
        let names: Vec<String> = (0..n).map(|i| format!("web-{i}")).collect();
        group.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            b.iter(|| {
                black_box(Maglev::build(
                    names.iter().map(|s| (s.as_str(), 1)),
                    Maglev::size_for(names.len(), 0),
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick, snapshot_load, maglev_build);
criterion_main!(benches);
