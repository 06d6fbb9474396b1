//! One client connection: pick an in-rotation instance, connect (trying another on failure), copy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::copy::{self, End};
use crate::endpoint::Endpoint;
use crate::metrics::RefuseReason;
use crate::pool::{Flow, Member};

/// Decrements a live-connection gauge however the task ends, including when
/// the runtime drops it at the end of a shutdown.
struct Live<'a>(&'a IntGauge);

impl<'a> Live<'a> {
    fn new(g: &'a IntGauge) -> Live<'a> {
        g.inc();
        Live(g)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one accepted client connection to the end.
pub async fn serve(endpoint: Arc<Endpoint>, mut client: TcpStream, peer: SocketAddr) {
    // The listener has TCP_NODELAY set and accepted sockets inherit it.
    let _live = Live::new(&endpoint.metrics.active);
    let (member, mut server) = match connect(&endpoint, peer).await {
        Ok(picked) => picked,
        Err(reason) => return refuse(&endpoint, client, peer, reason),
    };
    let _member_live = Live::new(&member.metrics.active);
    member.metrics.connections.inc();
    let end = copy::bidirectional(
        &mut client,
        &mut server,
        endpoint.idle_timeout,
        &member.metrics.sent_bytes,
        &member.metrics.received_bytes,
    )
    .await;
    let instance = &*member.name;
    match end {
        End::Closed => debug!(instance, "connection closed"),
        End::IdleTimeout => {
            debug!(instance, idle_timeout = ?endpoint.idle_timeout, "idle timeout: closing both sides")
        }
        End::Error(kind) => debug!(instance, error = ?kind, "connection ended by an error"),
    }
}

/// Picks and connects, walking on to the next in-rotation instance when a
/// connect fails, up to the endpoint's attempts.
async fn connect(
    endpoint: &Endpoint,
    peer: SocketAddr,
) -> Result<(Arc<Member>, TcpStream), RefuseReason> {
    let snapshot = endpoint.pool.load_full();
    let flow = Flow {
        source: peer,
        destination: endpoint.listen,
    };
    let first = snapshot
        .pick(endpoint.distribution, &flow, &endpoint.turn)
        .ok_or(RefuseReason::NoInstanceInRotation)?;
    let candidates = snapshot.candidates();
    let tries = (endpoint.connect_attempts as usize).min(candidates.len());
    for k in 0..tries {
        let member = &candidates[(first + k) % candidates.len()];
        let started = std::time::Instant::now();
        match tokio::time::timeout(endpoint.connect_timeout, TcpStream::connect(member.addr)).await
        {
            Ok(Ok(server)) => {
                member
                    .metrics
                    .connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                let _ = server.set_nodelay(true);
                return Ok((member.clone(), server));
            }
            Ok(Err(e)) => {
                member.metrics.connect_failures.inc();
                debug!(instance = %member.name, error = %e, attempt = k + 1, "connect failed");
            }
            Err(_) => {
                member.metrics.connect_failures.inc();
                debug!(instance = %member.name, timeout = ?endpoint.connect_timeout, attempt = k + 1, "connect timed out");
            }
        }
    }
    Err(RefuseReason::ConnectFailed)
}

/// Closes a client at once with a reset, counts it and logs it (rate-limited).
fn refuse(endpoint: &Endpoint, client: TcpStream, peer: SocketAddr, reason: RefuseReason) {
    endpoint.metrics.refused(reason).inc();
    if endpoint.may_log_refusal() {
        let members = endpoint.pool.load().members.len();
        warn!(endpoint = %endpoint.name, %peer, members, reason = reason.as_str(), "connection refused (logged at most once a second)");
    }
    // A reset tells the client at once that nobody will serve it.
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}
