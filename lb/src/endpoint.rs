//! An input endpoint: its listening sockets, settings, pool snapshot and accept loop.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rota_config::{AllDown, Distribution, EndpointConfig};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn, Instrument};

use crate::metrics::{EndpointMetrics, Metrics};
use crate::pool::PoolSnapshot;
use crate::proxy;

/// Longest pause of an accept loop after a resource error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// One endpoint, shared by its accept loops, its connections and the rotation writer.
pub struct Endpoint {
    pub name: Arc<str>,
    /// The address actually bound (port 0 resolved).
    pub listen: SocketAddr,
    pub distribution: Distribution,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
    pub fail_open: bool,
    /// The published pool; the accept path only loads it.
    pub pool: ArcSwap<PoolSnapshot>,
    /// Turn counter for round robin and least-connections tie-breaking.
    pub(crate) turn: AtomicUsize,
    pub metrics: EndpointMetrics,
    /// Unix second of the last "refused" log line, to log at most once a second.
    refuse_logged: AtomicU64,
}

impl Endpoint {
    /// Binds `listeners` sockets sharing the endpoint's address (SO_REUSEPORT),
    /// one per data-plane worker, and returns the endpoint and its sockets.
    pub fn bind(
        cfg: &EndpointConfig,
        metrics: &Metrics,
        listeners: usize,
    ) -> io::Result<(Arc<Endpoint>, Vec<std::net::TcpListener>)> {
        let first = listen_socket(cfg.listen, cfg.backlog, listeners > 1)?;
        let listen = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..listeners {
            sockets.push(listen_socket(listen, cfg.backlog, true)?);
        }
        let endpoint = Arc::new(Endpoint {
            name: cfg.name.as_str().into(),
            listen,
            distribution: cfg.distribution,
            idle_timeout: cfg.idle_timeout,
            connect_timeout: cfg.connect_timeout,
            connect_attempts: cfg.connect_attempts.max(1),
            fail_open: cfg.all_down == AllDown::FailOpen,
            pool: ArcSwap::from_pointee(PoolSnapshot::empty()),
            turn: AtomicUsize::new(0),
            metrics: metrics.endpoint(&cfg.name),
            refuse_logged: AtomicU64::new(0),
        });
        Ok((endpoint, sockets))
    }

    /// True at most once a second: for log lines a flood of clients could trigger.
    pub(crate) fn may_log_refusal(&self) -> bool {
        let now = unix_seconds();
        let last = self.refuse_logged.load(Ordering::Relaxed);
        now != last
            && self
                .refuse_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn listen_socket(
    addr: SocketAddr,
    backlog: u32,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Accepts until `stop` fires, handing each connection to its own task.
///
/// Accept errors never end the loop: resource exhaustion (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM) backs off, doubling up to a second, and is logged at most
/// once a second; per-connection errors (a client that reset before accept)
/// are retried at once.
pub async fn accept_loop(
    endpoint: Arc<Endpoint>,
    listener: std::net::TcpListener,
    stop: CancellationToken,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!(endpoint = %endpoint.name, error = %e, "cannot register listener");
            return;
        }
    };
    // One cancellation future for the life of the loop, not one per accept.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut backoff = Duration::from_millis(5);
    let mut last_log: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                endpoint.metrics.accepted.inc();
                let span = tracing::debug_span!("conn", endpoint = %endpoint.name, %peer);
                tokio::spawn(proxy::serve(endpoint.clone(), stream, peer).instrument(span));
            }
            Err(e) if is_resource_exhaustion(&e) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    warn!(endpoint = %endpoint.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed: out of resources, backing off");
                    last_log = Some(Instant::now());
                }
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.name, error = %e, "accept failed for one connection");
            }
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}
