//! rota's health probing: "is this instance healthy?", asked over and over.
//!
//! The crate knows nothing about proxying. Its owner builds a [`ProbeSpec`] per endpoint
//! from the configuration, hands a [`Prober`] one [`Target`] per instance, and reads a
//! [`Report`] after every attempt from a channel: the attempt's outcome plus the rotation
//! verdict of SPEC rotation rules 1–2 (Azure's probe timing). Rule 4 (a single instance
//! is always in rotation) is the owner's business: this crate reports what it sees.
//!
//! Probe kinds: the guest-agent status ([`agent`] documents the wire protocol), `http`
//! (healthy only on 200), `https` (the same over TLS, verified by default) and `tcp`
//! (healthy when the connection is accepted).
//!
//! # Layout
//!
//! - [`health`]: the pure timing state machine (rise, fall, timeout, refusals).
//! - [`agent`]: the guest-agent status protocol and its types.
//! - [`spec`]: [`ProbeSpec`], built once per endpoint from `rota_config::ProbeConfig`.
//! - `tls`: the rustls client configuration and readable TLS error reasons.
//! - `attempt`: one probe attempt of each kind, with bounded reads.
//! - `runner`: the per-target loop (jitter, interval, deadline, expiry).
//! - `prober`: [`Prober`], the task per target and the Prometheus metrics.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub mod agent;
mod attempt;
pub mod health;
mod prober;
mod runner;
pub mod spec;
mod tls;

pub use agent::{AgentState, AgentStatus, STATUS_PATH};
pub use health::{HealthState, Timing, Verdict};
pub use prober::Prober;
pub use spec::{ProbeKind, ProbeSpec};

/// Most bytes of an HTTP answer (status line, headers and body together) an attempt reads.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Who is probed: the endpoint and instance it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub endpoint: Arc<str>,
    pub instance: Arc<str>,
}

impl TargetKey {
    pub fn new(endpoint: impl Into<Arc<str>>, instance: impl Into<Arc<str>>) -> TargetKey {
        TargetKey {
            endpoint: endpoint.into(),
            instance: instance.into(),
        }
    }
}

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.endpoint, self.instance)
    }
}

/// One thing to probe: whose it is, where to connect, and how.
#[derive(Clone, Debug)]
pub struct Target {
    pub key: TargetKey,
    /// The address probed: the instance's probe port, or its agent's address.
    pub addr: SocketAddr,
    pub spec: Arc<ProbeSpec>,
}

/// How one attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Healthy answer (200, `Ready`, connection accepted).
    Success,
    /// A positive "no" from the instance: non-200 status, agent state other than
    /// `Ready`, connection refused or reset. Takes the instance out at once.
    Refused(String),
    /// No usable answer: timeout, garbage, TLS failure, early close. Takes the instance
    /// out only once the probe timeout has passed without a success (or after `fall`).
    Failed(String),
}

impl Outcome {
    /// `success`, `refused` or `failed`: the metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// One attempt's outcome and the resulting rotation verdict.
///
/// Sent after every attempt. One more kind of report exists: when a healthy target's
/// `timeout` runs out between (or during) attempts, a report with
/// `Outcome::Failed("no successful probe for ...")`, `duration` zero and
/// `changed = true` is sent at that moment, so the verdict flips on time.
///
/// After [`Prober::remove`] (or an [`Prober::add`] replacing the key) one report of the
/// stopped task that was already on its way may still arrive.
#[derive(Clone, Debug)]
pub struct Report {
    pub key: TargetKey,
    /// The state machine's verdict after this attempt.
    pub healthy: bool,
    /// The verdict differs from the previous one (the first report counts as changed).
    pub changed: bool,
    pub outcome: Outcome,
    /// Human text: "http 200", "http 503", "timeout after 2s", "connection refused",
    /// "connection reset", "tls: certificate expired", "agent: Busy", ...
    pub reason: String,
    /// How long the attempt took.
    pub duration: Duration,
    /// Wall-clock time of the last success, if any.
    pub last_success: Option<SystemTime>,
    /// The probe kind: "guest-agent", "http", "https" or "tcp".
    pub kind: &'static str,
}

/// What can go wrong setting probes up (attempts never fail this way: they report).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid probe settings: {0}")]
    Invalid(String),
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {path}: {detail}")]
    CaPem {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("tls setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("probe metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("the prober must be created inside a tokio runtime")]
    NoRuntime,
}
