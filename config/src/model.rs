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
    /// Fabric roles, in file order; an endpoint's `pool` may name one.
    pub roles: Vec<RoleConfig>,
    /// `[fabric]`; only used when `roles` is not empty.
    pub fabric: FabricConfig,
}

impl Config {
    /// The pool called `name`, if there is one.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|pool| pool.name == name)
    }

    /// The role called `name`, if there is one.
    pub fn role(&self, name: &str) -> Option<&RoleConfig> {
        self.roles.iter().find(|role| role.name == name)
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
    /// Name of the `[[pool]]` or `[[role]]` whose instances serve this endpoint.
    pub pool: String,
    /// Port on every instance; `None` keeps each backend's own port. Not applied
    /// to role instances: each has its own port, chosen by the fabric.
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

/// Update domains of a role unless it says otherwise (Azure's default).
pub const DEFAULT_UPDATE_DOMAINS: u32 = 5;
/// Azure's largest update-domain count.
pub const MAX_UPDATE_DOMAINS: u32 = 20;
/// Fault domains a role spreads over unless it says otherwise (Azure's default).
pub const DEFAULT_FAULT_DOMAINS: u32 = 2;
/// Largest fault-domain count a role or the fabric may ask for.
pub const MAX_FAULT_DOMAINS: u32 = 20;
/// Largest instance count of one role.
pub const MAX_ROLE_INSTANCES: u32 = 200;
/// How often the fabric asks every guest agent for its status.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Missed heartbeats in a row after which the fabric reboots an instance.
pub const DEFAULT_HEARTBEAT_MISSES: u32 = 3;
/// How long a stopping instance gets before it is killed (Azure's 5 minutes).
pub const DEFAULT_ROLE_SHUTDOWN_GRACE: Duration = Duration::from_secs(5 * 60);
/// How long a restarted instance gets to report `Ready` during an update (Azure's 15 minutes).
pub const DEFAULT_READY_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// How long an instance stays `Stopping` (out of rotation) before its processes are told to stop.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(2);
/// Simulated hosts per fault domain created up front (more are added when placement needs them).
pub const DEFAULT_HOSTS_PER_FAULT_DOMAIN: u32 = 3;
/// The fabric's state folder when the file names none, relative to the file's folder.
pub const DEFAULT_FABRIC_STATE_DIR: &str = ".rota-fabric";

/// `[[role]]`: a kind of instance the fabric stub runs as real processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleConfig {
    /// Also the pool name endpoints use to reach its instances.
    pub name: String,
    /// Instance count (1..=200).
    pub instances: u32,
    /// The program and its arguments, with placeholders `{port}`, `{instance}`,
    /// `{role}`, `{disk}` and `{base}`; a program spelled `rota` is the running binary.
    pub command: Vec<String>,
    /// Default 5, 1..=20; instance *i* is in update domain *i mod n*.
    pub update_domains: u32,
    /// Default 2, 1..=20.
    pub fault_domains: u32,
    /// The role's read-only base image folder; default `<state_dir>/base/<role>`.
    pub base_image: Option<PathBuf>,
    /// HTTP path the guest agent requests on the role's port to decide `Ready`;
    /// `None` means a TCP connect decides.
    pub health_path: Option<String>,
}

/// How a rolling update moves from one update domain to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpdateMode {
    /// `auto`: as soon as the previous update domain is `Ready` again.
    #[default]
    Auto,
    /// `manual`: only when an operator says "continue".
    Manual,
}

impl UpdateMode {
    /// Every mode, in documentation order.
    pub const ALL: [UpdateMode; 2] = [UpdateMode::Auto, UpdateMode::Manual];

    /// The spelling used in config files and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateMode::Auto => "auto",
            UpdateMode::Manual => "manual",
        }
    }

    /// The mode spelled `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.as_str() == name)
    }
}

impl fmt::Display for UpdateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[fabric]`: how the fabric stub runs roles. Only read when the file has roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FabricConfig {
    /// Where state, disks and logs live; default `.rota-fabric` beside the file.
    pub state_dir: PathBuf,
    /// Default 5 s.
    pub heartbeat_interval: Duration,
    /// Default 3: missed heartbeats in a row before an instance is rebooted.
    pub heartbeat_misses: u32,
    /// Default 5 min: how long a stopping instance gets before it is killed.
    pub shutdown_grace: Duration,
    /// Default 15 min: how long an updated instance gets to report `Ready`.
    pub ready_deadline: Duration,
    /// Default 2 s: an instance is out of rotation this long before it is stopped.
    pub drain_delay: Duration,
    /// Default [`UpdateMode::Auto`].
    pub update_mode: UpdateMode,
    /// Default: the largest `fault_domains` of any role.
    pub fault_domains: u32,
    /// Default 3.
    pub hosts_per_fault_domain: u32,
    /// Default false: instances keep running when rota exits (a restart re-adopts them).
    pub stop_instances_on_exit: bool,
    /// Default false. True: the fabric runs in its own process (`rota fabric
    /// run` with the same `state_dir`) and the balancer follows its
    /// `topology.json`; the balancer keeps serving if that process dies.
    pub external: bool,
}

impl FabricConfig {
    /// Every setting at its default, state in `state_dir`.
    pub fn with_state_dir(state_dir: PathBuf) -> Self {
        FabricConfig {
            state_dir,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_misses: DEFAULT_HEARTBEAT_MISSES,
            shutdown_grace: DEFAULT_ROLE_SHUTDOWN_GRACE,
            ready_deadline: DEFAULT_READY_DEADLINE,
            drain_delay: DEFAULT_DRAIN_DELAY,
            update_mode: UpdateMode::Auto,
            fault_domains: DEFAULT_FAULT_DOMAINS,
            hosts_per_fault_domain: DEFAULT_HOSTS_PER_FAULT_DOMAIN,
            stop_instances_on_exit: false,
            external: false,
        }
    }
}

impl Default for FabricConfig {
    /// Every setting at its default, state in `.rota-fabric` under the current folder.
    fn default() -> Self {
        FabricConfig::with_state_dir(PathBuf::from(DEFAULT_FABRIC_STATE_DIR))
    }
}
