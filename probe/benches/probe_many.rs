//! Informs whether rota's health probing can share a thread (one current-thread
//! runtime) at fleet scale: what CPU does probing 10,000 instances at a 1 s interval cost?
//!
//! Not a timing assertion, a measurement. The prober runs alone on a current-thread
//! tokio runtime in its own thread; the targets (a few listeners per kind on 127.0.0.1)
//! run on another. After a warm-up, CPU is read with `getrusage` twice: for the prober's
//! thread only (`RUSAGE_THREAD`) and for the whole process (`RUSAGE_SELF`, targets
//! included, nothing subtracted), and the probe reports of the window are counted.
//!
//! `ROTA_BENCH_TARGETS` (default 10000) and `ROTA_BENCH_SECONDS` (measured window per
//! kind, default 10) change the size; `ROTA_BENCH_KINDS=http` runs one kind only.
//! Linux only (`RUSAGE_THREAD`).
//!
//! Run: `cargo bench -p rota-probe --bench probe_many`

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rota_probe::{Outcome, ProbeKind, ProbeSpec, Prober, Report, Target, TargetKey, Timing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(800);
const WARM_UP: Duration = Duration::from_secs(2);
/// Listeners per kind the targets are spread over.
const LISTENERS: usize = 8;
const HTTP_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
/// Distinct failure reasons kept for the summary; the rest are only counted.
const MAX_REASONS: usize = 12;

fn main() {
    let targets: usize = setting("ROTA_BENCH_TARGETS", 10_000);
    let seconds: u64 = setting("ROTA_BENCH_SECONDS", 10);
    let window = Duration::from_secs(seconds);
    let kinds = std::env::var("ROTA_BENCH_KINDS").unwrap_or_else(|_| "tcp,http".into());
    let wanted = |name: &str| kinds.split(',').any(|k| k.trim() == name);

    let local = match TargetServers::start() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("probe_many: cannot start the local targets: {e}");
            std::process::exit(1);
        }
    };

    println!(
        "probe_many: {targets} targets per kind over {LISTENERS} local listeners, interval {}, \
         timeout {}, attempt timeout {}; warm-up {}, window {}; open-files limit {}; {} CPUs",
        secs(INTERVAL),
        secs(TIMEOUT),
        secs(ATTEMPT_TIMEOUT),
        secs(WARM_UP),
        secs(window),
        open_files_limit(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let mut runs = Vec::new();
    for (kind, addrs) in [
        (ProbeKind::Tcp, local.tcp.clone()),
        (
            ProbeKind::Http {
                path: "/healthz".into(),
            },
            local.http.clone(),
        ),
    ] {
        if !wanted(kind.name()) {
            continue;
        }
        match measure(kind, &addrs, targets, window) {
            Ok(run) => runs.push(run),
            Err(e) => eprintln!("probe_many: run failed: {e}"),
        }
    }
    let server_errors = local.stop();
    report(&runs, &server_errors);
}

/// An environment override or the default; a value that does not parse ends the bench.
fn setting<T: FromStr + PartialOrd + Default>(name: &str, default: T) -> T {
    let Ok(raw) = std::env::var(name) else {
        return default;
    };
    match raw.trim().parse::<T>() {
        Ok(v) if v > T::default() => v,
        _ => {
            eprintln!("probe_many: {name}={raw:?} is not a positive whole number");
            std::process::exit(2);
        }
    }
}

/// CPU time used, split as the kernel reports it.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    user: Duration,
    system: Duration,
}

impl Cpu {
    fn total(self) -> Duration {
        self.user + self.system
    }

    fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// `getrusage` for `who` (`RUSAGE_SELF` or `RUSAGE_THREAD`, the latter meaning the caller's
/// own thread).
// The workspace denies unsafe code; this one foreign call is the exception.
#[allow(unsafe_code)]
fn cpu_of(who: libc::c_int) -> io::Result<Cpu> {
    // SAFETY: `rusage` is a plain C struct of integers, so all-zero bytes are a valid
    // value; getrusage only writes into the struct behind the pointer, which is a live,
    // aligned, exclusively borrowed local for the whole call.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut usage) != 0 {
            return Err(io::Error::last_os_error());
        }
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Cpu {
        user: time(usage.ru_utime),
        system: time(usage.ru_stime),
    })
}

/// Both readings at one moment: the calling thread's and the process's.
fn cpu_now() -> io::Result<(Cpu, Cpu)> {
    Ok((cpu_of(libc::RUSAGE_THREAD)?, cpu_of(libc::RUSAGE_SELF)?))
}

/// What the reports of a stretch of time said.
#[derive(Debug, Default)]
struct Tally {
    reports: u64,
    success: u64,
    refused: u64,
    failed: u64,
    /// Reasons of the non-successes, up to [`MAX_REASONS`] distinct ones.
    reasons: BTreeMap<String, u64>,
    other_reasons: u64,
    /// Attempt durations, summed and the longest.
    busy: Duration,
    longest: Duration,
}

impl Tally {
    fn note(&mut self, report: &Report) {
        self.reports += 1;
        self.busy += report.duration;
        self.longest = self.longest.max(report.duration);
        match report.outcome {
            Outcome::Success => {
                self.success += 1;
                return;
            }
            Outcome::Refused(_) => self.refused += 1,
            Outcome::Failed(_) => self.failed += 1,
        }
        if let Some(n) = self.reasons.get_mut(&report.reason) {
            *n += 1;
        } else if self.reasons.len() < MAX_REASONS {
            self.reasons.insert(report.reason.clone(), 1);
        } else {
            self.other_reasons += 1;
        }
    }

    /// Non-successes that ran into the open-files limit.
    fn out_of_fds(&self) -> u64 {
        let marks = [
            format!("os error {}", libc::EMFILE),
            format!("os error {}", libc::ENFILE),
        ];
        self.reasons
            .iter()
            .filter(|(reason, _)| marks.iter().any(|m| reason.contains(m.as_str())))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Counts reports until `deadline` (or until every sender is gone).
async fn tally_until(rx: &mut UnboundedReceiver<Report>, deadline: tokio::time::Instant) -> Tally {
    let mut tally = Tally::default();
    let end = tokio::time::sleep_until(deadline);
    tokio::pin!(end);
    loop {
        tokio::select! {
            biased;
            _ = &mut end => break,
            report = rx.recv() => match report {
                Some(r) => tally.note(&r),
                None => break,
            },
        }
    }
    tally
}

/// One kind's measured window.
#[derive(Debug)]
struct Run {
    kind: &'static str,
    targets: usize,
    wall: Duration,
    tally: Tally,
    thread: Cpu,
    process: Cpu,
}

/// Probes `targets` targets spread over `addrs` on a fresh prober thread; measures the
/// window after the warm-up.
fn measure(
    kind: ProbeKind,
    addrs: &[SocketAddr],
    targets: usize,
    window: Duration,
) -> io::Result<Run> {
    let timing = Timing {
        interval: INTERVAL,
        timeout: TIMEOUT,
        attempt_timeout: ATTEMPT_TIMEOUT,
        rise: 1,
        fall: None,
    };
    let spec = Arc::new(ProbeSpec::new(kind, timing).map_err(io::Error::other)?);
    let addrs = addrs.to_vec();
    let name = spec.kind_name();
    let thread = std::thread::Builder::new()
        .name(format!("prober-{name}"))
        .spawn(move || -> io::Result<Run> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let registry = prometheus::Registry::new();
                let prober = Prober::new(tx, &registry).map_err(io::Error::other)?;
                for i in 0..targets {
                    prober.add(Target {
                        // Endpoints of 100 instances, as a fleet would have them.
                        key: TargetKey::new(format!("ep-{}", i / 100), format!("vm-{i}")),
                        addr: addrs[i % addrs.len()],
                        spec: spec.clone(),
                    });
                }
                let _ = tally_until(&mut rx, tokio::time::Instant::now() + WARM_UP).await;

                let (thread_before, process_before) = cpu_now()?;
                let started = Instant::now();
                let tally = tally_until(&mut rx, tokio::time::Instant::now() + window).await;
                let (thread_after, process_after) = cpu_now()?;
                let wall = started.elapsed();

                drop(prober);
                Ok(Run {
                    kind: name,
                    targets,
                    wall,
                    tally,
                    thread: thread_after.since(thread_before),
                    process: process_after.since(process_before),
                })
            })
        })?;
    thread
        .join()
        .map_err(|_| io::Error::other("the prober thread panicked"))?
}

/// Problems the local targets met while accepting.
#[derive(Debug, Default)]
struct ServerErrors {
    accept: AtomicU64,
    out_of_fds: AtomicU64,
}

/// The local probe targets: listeners that accept and drop (`tcp`) and tiny servers that
/// answer 200 (`http`), on a current-thread runtime in a thread of their own.
struct TargetServers {
    tcp: Vec<SocketAddr>,
    http: Vec<SocketAddr>,
    errors: Arc<ServerErrors>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

type Bound = io::Result<(Vec<SocketAddr>, Vec<SocketAddr>)>;

impl TargetServers {
    fn start() -> io::Result<TargetServers> {
        let errors = Arc::new(ServerErrors::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Bound>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let errs = errors.clone();
        let thread = std::thread::Builder::new()
            .name("targets".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(serve(ready_tx, stop_rx, errs));
            })?;
        let (tcp, http) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the targets thread ended early"))??;
        Ok(TargetServers {
            tcp,
            http,
            errors,
            stop,
            thread,
        })
    }

    /// Stops the targets and hands back what went wrong while they ran.
    fn stop(self) -> Arc<ServerErrors> {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        self.errors
    }
}

/// Binds the listeners, says where they are, serves until told to stop.
async fn serve(
    ready: std::sync::mpsc::Sender<Bound>,
    stop: tokio::sync::oneshot::Receiver<()>,
    errors: Arc<ServerErrors>,
) {
    let listeners = || {
        (0..LISTENERS)
            .map(|_| listen())
            .collect::<io::Result<Vec<_>>>()
    };
    let (tcp, http) = match listeners().and_then(|t| Ok((t, listeners()?))) {
        Ok(both) => both,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(addrs_of(&tcp).and_then(|t| Ok((t, addrs_of(&http)?))));
    for l in tcp {
        tokio::spawn(accept_and_drop(l, errors.clone()));
    }
    for l in http {
        tokio::spawn(answer_ok(l, errors.clone()));
    }
    let _ = stop.await;
}

fn addrs_of(listeners: &[TcpListener]) -> io::Result<Vec<SocketAddr>> {
    listeners.iter().map(TcpListener::local_addr).collect()
}

/// A loopback listener on an ephemeral port with a backlog deep enough for a burst.
fn listen() -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    socket.listen(4096)
}

/// The next connection, or `None` after an accept error (counted, then a short pause so
/// an fd shortage does not spin).
async fn next_conn(listener: &TcpListener, errors: &ServerErrors) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => Some(stream),
        Err(e) => {
            errors.accept.fetch_add(1, Ordering::Relaxed);
            if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                errors.out_of_fds.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// `tcp` target: the accept is the answer.
async fn accept_and_drop(listener: TcpListener, errors: Arc<ServerErrors>) {
    loop {
        drop(next_conn(&listener, &errors).await);
    }
}

/// `http` target: reads a request head, answers 200 and closes.
async fn answer_ok(listener: TcpListener, errors: Arc<ServerErrors>) {
    loop {
        if let Some(stream) = next_conn(&listener, &errors).await {
            tokio::spawn(answer_one(stream));
        }
    }
}

async fn answer_one(mut stream: TcpStream) {
    let mut head = [0u8; 2048];
    let mut len = 0;
    while !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut head[len..]).await {
            Ok(n) if n > 0 && len + n < head.len() => len += n,
            // Closed, failed, or a head bigger than any probe sends.
            _ => return,
        }
    }
    let _ = stream.write_all(HTTP_ANSWER).await;
}

fn report(runs: &[Run], server: &ServerErrors) {
    println!();
    println!(
        "{:<5} {:>7} {:>8} {:>10} {:>6} {:>14} {:>12} {:>13} {:>14}",
        "kind",
        "targets",
        "interval",
        "reports/s",
        "ok %",
        "prober thread",
        "process",
        "µs/attempt",
        "µs/attempt"
    );
    println!(
        "{:<5} {:>7} {:>8} {:>10} {:>6} {:>14} {:>12} {:>13} {:>14}",
        "", "", "", "", "", "CPU % (1 core)", "CPU %", "(prober thr)", "(process)"
    );
    for run in runs {
        let wall = run.wall.as_secs_f64();
        let reports = run.tally.reports.max(1) as f64;
        println!(
            "{:<5} {:>7} {:>8} {:>10.0} {:>6.1} {:>14.1} {:>12.1} {:>13.1} {:>14.1}",
            run.kind,
            run.targets,
            secs(INTERVAL),
            run.tally.reports as f64 / wall,
            100.0 * run.tally.success as f64 / reports,
            100.0 * run.thread.total().as_secs_f64() / wall,
            100.0 * run.process.total().as_secs_f64() / wall,
            run.thread.total().as_secs_f64() * 1e6 / reports,
            run.process.total().as_secs_f64() * 1e6 / reports,
        );
    }

    println!();
    for run in runs {
        println!(
            "{}: window {:.2}s, {} reports ({} success, {} refused, {} failed); \
             attempts took {:.2}ms on average, {:.1}ms at most; \
             prober thread user {:.2}s sys {:.2}s; process user {:.2}s sys {:.2}s",
            run.kind,
            run.wall.as_secs_f64(),
            run.tally.reports,
            run.tally.success,
            run.tally.refused,
            run.tally.failed,
            run.tally.busy.as_secs_f64() * 1e3 / run.tally.reports.max(1) as f64,
            run.tally.longest.as_secs_f64() * 1e3,
            run.thread.user.as_secs_f64(),
            run.thread.system.as_secs_f64(),
            run.process.user.as_secs_f64(),
            run.process.system.as_secs_f64(),
        );
        for (reason, n) in &run.tally.reasons {
            println!("  {n:>8} × {reason}");
        }
        if run.tally.other_reasons > 0 {
            println!("  {:>8} × (other reasons)", run.tally.other_reasons);
        }
        let expected = run.targets as f64 * run.wall.as_secs_f64() / INTERVAL.as_secs_f64();
        if (run.tally.reports as f64) < 0.98 * expected {
            println!(
                "  NOTE: {:.0}% of the expected {expected:.0} reports: a tick noticed more than 5ms \
                 late moves that target's schedule back (MissedTickBehavior::Delay), so the \
                 prober thread, or the machine, fell behind",
                100.0 * run.tally.reports as f64 / expected
            );
        }
        let fds = run.tally.out_of_fds();
        if fds > 0 {
            println!(
                "  NOTE: {fds} probe connects failed for lack of file descriptors (EMFILE/ENFILE): \
                 the numbers above undercount the real cost"
            );
        }
    }
    let accept_errors = server.accept.load(Ordering::Relaxed);
    if accept_errors > 0 {
        println!(
            "targets: {accept_errors} accept errors, {} of them EMFILE/ENFILE",
            server.out_of_fds.load(Ordering::Relaxed)
        );
    }

    println!();
    println!("prober thread: the one current-thread runtime running every probe task and the loop");
    println!(
        "  counting reports. On loopback the kernel does part of the receiving side's TCP work"
    );
    println!("  in the sender's context, so some of the targets' kernel time lands here too.");
    println!("process: everything, nothing subtracted: the prober thread plus the targets' thread");
    println!(
        "  (accepting, answering http) and the idle main thread. Real targets would not be on"
    );
    println!("  this machine, so the prober-thread figure is the closer one to rota's cost.");
    println!("CPU % is of one core; µs/attempt is the CPU of the window divided by its reports.");
}

fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The soft and hard open-files limits, as `/proc/self/limits` shows them.
fn open_files_limit() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    let mut parts = l["Max open files".len()..].split_whitespace();
                    format!(
                        "soft {} / hard {}",
                        parts.next().unwrap_or("?"),
                        parts.next().unwrap_or("?")
                    )
                })
        })
        .unwrap_or_else(|| "unknown".into())
}
