//! The validated configuration: what the rest of rota reads.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default admin listen address: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Azure's load-balancer idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60);
/// Bound on one connect attempt to an instance.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Instances tried for one client connection before it is given up.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
/// Listen backlog of an endpoint.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Azure's probe interval.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// Azure's probe timeout: no success for this long takes an instance out.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(31);
/// Deadline of one probe attempt, unless four fifths of the interval is shorter.
pub const DEFAULT_PROBE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Successes in a row that bring an instance back.
pub const DEFAULT_PROBE_RISE: u32 = 1;
/// Path requested by `http` and `https` probes.
pub const DEFAULT_PROBE_PATH: &str = "/";
/// Relative share of a backend.
pub const DEFAULT_BACKEND_WEIGHT: u32 = 1;
/// Azure's smallest allowed probe interval; shorter ones draw a warning.
pub const AZURE_MIN_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a shutdown waits for live connections before closing them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A whole rota configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin API and `/metrics` listener.
    pub admin: AdminConfig,
    /// Data-plane worker threads; `None` means one per core.
    pub workers: Option<usize>,
    /// How long shutdown lets live connections finish (default 30 s).
    pub shutdown_grace: Duration,
    /// Public listeners, in file order.
    pub endpoints: Vec<EndpointConfig>,
    /// Pools of static backends, in file order.
    pub pools: Vec<PoolConfig>,
}

impl Config {
    /// The pool called `name`, if there is one.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|pool| pool.name == name)
    }

    /// The endpoint called `name`, if there is one.
    pub fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        self.endpoints.iter().find(|endpoint| endpoint.name == name)
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Default `127.0.0.1:9090`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    /// Loopback only: `127.0.0.1:9090`.
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// `[[endpoint]]`: an input endpoint, a public listener mapped to one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// Name of the `[[pool]]` whose instances serve this endpoint.
    pub pool: String,
    /// Port on every instance; `None` keeps each backend's own port.
    pub target_port: Option<u16>,
    /// Default [`Distribution::FiveTuple`].
    pub distribution: Distribution,
    /// Default 4 min.
    pub idle_timeout: Duration,
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Default 3; at least 1.
    pub connect_attempts: u32,
    /// Default [`AllDown::Refuse`].
    pub all_down: AllDown,
    /// Default 4096.
    pub backlog: u32,
    /// The LoadBalancerProbe; `None` asks each instance's guest agent.
    pub probe: Option<ProbeConfig>,
}

/// How an endpoint spreads new connections over its in-rotation instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Distribution {
    /// `five-tuple`: hash of source IP and port, destination IP and port, protocol.
    #[default]
    FiveTuple,
    /// `source-ip`: 2-tuple affinity (source IP, destination IP).
    SourceIp,
    /// `source-ip-protocol`: 3-tuple affinity (source IP, destination IP, protocol).
    SourceIpProtocol,
    /// `round-robin`
    RoundRobin,
    /// `least-connections`
    LeastConnections,
}

impl Distribution {
    /// Every mode, in documentation order.
    pub const ALL: [Distribution; 5] = [
        Distribution::FiveTuple,
        Distribution::SourceIp,
        Distribution::SourceIpProtocol,
        Distribution::RoundRobin,
        Distribution::LeastConnections,
    ];

    /// The spelling used in config files and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Distribution::FiveTuple => "five-tuple",
            Distribution::SourceIp => "source-ip",
            Distribution::SourceIpProtocol => "source-ip-protocol",
            Distribution::RoundRobin => "round-robin",
            Distribution::LeastConnections => "least-connections",
        }
    }

    /// The mode spelled `name` in a config file, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == name)
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint does when several instances exist and none is in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AllDown {
    /// `refuse`: close new connections at once (SPEC rotation rule 5).
    #[default]
    Refuse,
    /// `fail-open`: spread new connections over every instance anyway.
    FailOpen,
}

impl AllDown {
    /// Every behaviour, in documentation order.
    pub const ALL: [AllDown; 2] = [AllDown::Refuse, AllDown::FailOpen];

    /// The spelling used in config files and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            AllDown::Refuse => "refuse",
            AllDown::FailOpen => "fail-open",
        }
    }

    /// The behaviour spelled `name` in a config file, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == name)
    }
}

impl fmt::Display for AllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[endpoint.probe]`: a LoadBalancerProbe, or explicit guest-agent probe timing.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub protocol: ProbeProtocol,
    /// Port probed on each instance; `None` uses the endpoint's target port
    /// (or, for `guest-agent`, each backend's agent address).
    pub port: Option<u16>,
    /// Path for `http`/`https` (default `/`).
    pub path: String,
    /// Default 15 s.
    pub interval: Duration,
    /// Default 31 s: no success for this long takes an instance out.
    pub timeout: Duration,
    /// Deadline of one attempt; default the smaller of 5 s and 4/5 of `interval`.
    /// Always shorter than `interval`.
    pub attempt_timeout: Duration,
    /// Successes in a row to come back (default 1: the first success).
    pub rise: u32,
    /// Failures in a row that take an instance out before `timeout` (default: none).
    pub fall: Option<u32>,
    /// TLS settings for `https`.
    pub tls: TlsConfig,
}

impl ProbeConfig {
    /// A `guest-agent` probe with every option at its default: Azure's
    /// 15 s interval and 31 s timeout, the agent's own address, rise 1, no fall.
    pub fn guest_agent_default() -> Self {
        ProbeConfig {
            protocol: ProbeProtocol::GuestAgent,
            port: None,
            path: DEFAULT_PROBE_PATH.to_string(),
            interval: DEFAULT_PROBE_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
            attempt_timeout: default_attempt_timeout(DEFAULT_PROBE_INTERVAL),
            rise: DEFAULT_PROBE_RISE,
            fall: None,
            tls: TlsConfig::default(),
        }
    }
}

/// The deadline of one probe attempt when the file sets none: the smaller of
/// 5 s and four fifths of `interval`, so an attempt always ends before the next
/// one is due.
pub fn default_attempt_timeout(interval: Duration) -> Duration {
    // Divide first: `interval * 4` could overflow for absurd intervals.
    DEFAULT_PROBE_ATTEMPT_TIMEOUT.min(interval / 5 * 4)
}

/// Which kind of probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeProtocol {
    /// `guest-agent`: GET the agent's status; healthy only when it says `Ready`.
    GuestAgent,
    /// `http`: GET `path`; healthy only on 200.
    Http,
    /// `https`: the same over TLS.
    Https,
    /// `tcp`: healthy when the connection is accepted.
    Tcp,
}

impl ProbeProtocol {
    /// Every protocol, in documentation order.
    pub const ALL: [ProbeProtocol; 4] = [
        ProbeProtocol::GuestAgent,
        ProbeProtocol::Http,
        ProbeProtocol::Https,
        ProbeProtocol::Tcp,
    ];

    /// The spelling used in config files and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeProtocol::GuestAgent => "guest-agent",
            ProbeProtocol::Http => "http",
            ProbeProtocol::Https => "https",
            ProbeProtocol::Tcp => "tcp",
        }
    }

    /// The protocol spelled `name` in a config file, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|protocol| protocol.as_str() == name)
    }

    /// Whether the probe sends an HTTP request (and so uses `path`).
    pub fn is_http(self) -> bool {
        matches!(self, ProbeProtocol::Http | ProbeProtocol::Https)
    }
}

impl fmt::Display for ProbeProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[endpoint.probe.tls]`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust instead of the bundled web roots.
    pub ca_file: Option<PathBuf>,
    /// SNI and verified name; default the instance's IP address.
    pub server_name: Option<String>,
    /// `insecure_skip_verify = true`: accept any certificate. Loudly logged.
    pub insecure_skip_verify: bool,
}

/// `[[pool]]`: a named set of static backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub backends: Vec<BackendConfig>,
}

/// `[[pool.backend]]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Instance name, unique within the pool.
    pub name: String,
    pub address: SocketAddr,
    /// Relative share of new connections (default 1, 1..=100).
    pub weight: u32,
    /// Guest-agent status address of this instance, if it has an agent.
    pub agent: Option<SocketAddr>,
}
