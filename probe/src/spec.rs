//! [`ProbeSpec`]: how an endpoint's instances are probed, built once from the config.

use std::sync::Arc;
use std::time::Duration;

use hyper::http::uri::PathAndQuery;
use rota_config::{ProbeConfig, ProbeProtocol};
use rustls_pki_types::ServerName;

use crate::health::Timing;
use crate::{tls, ProbeError};

/// What an attempt does.
#[derive(Clone, Debug)]
pub enum ProbeKind {
    /// GET [`crate::STATUS_PATH`] on the agent's address; healthy only on `Ready`.
    GuestAgent,
    /// GET `path`; healthy only on 200.
    Http { path: String },
    /// GET `path` over TLS; healthy only on 200.
    Https {
        path: String,
        /// Built once per spec: roots (bundled or the CA file), verifier, ring provider.
        tls: Arc<rustls::ClientConfig>,
        /// SNI and verified name; `None` uses the instance's IP address.
        server_name: Option<ServerName<'static>>,
    },
    /// Healthy when the TCP connection is accepted.
    Tcp,
}

impl ProbeKind {
    /// "guest-agent" | "http" | "https" | "tcp".
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::GuestAgent => "guest-agent",
            ProbeKind::Http { .. } => "http",
            ProbeKind::Https { .. } => "https",
            ProbeKind::Tcp => "tcp",
        }
    }
}

/// How an endpoint's instances are probed. Shared by all of its targets.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    kind: ProbeKind,
    timing: Timing,
}

impl ProbeSpec {
    /// Builds a spec from a validated `[endpoint.probe]`: checks the timing once more,
    /// and for `https` loads the CA file and builds the TLS client configuration.
    pub fn from_config(cfg: &ProbeConfig) -> Result<ProbeSpec, ProbeError> {
        let timing = Timing::from(cfg);
        let kind = match cfg.protocol {
            ProbeProtocol::GuestAgent => ProbeKind::GuestAgent,
            ProbeProtocol::Tcp => ProbeKind::Tcp,
            ProbeProtocol::Http => ProbeKind::Http {
                path: checked_path(&cfg.path)?,
            },
            ProbeProtocol::Https => {
                let server_name = match &cfg.tls.server_name {
                    Some(name) => Some(
                        ServerName::try_from(name.clone())
                            .map_err(|_| ProbeError::ServerName(name.clone()))?,
                    ),
                    None => None,
                };
                ProbeKind::Https {
                    path: checked_path(&cfg.path)?,
                    tls: tls::client_config(&cfg.tls)?,
                    server_name,
                }
            }
        };
        ProbeSpec::new(kind, timing)
    }

    /// A spec from parts; checks the timing.
    pub fn new(kind: ProbeKind, timing: Timing) -> Result<ProbeSpec, ProbeError> {
        check_timing(&timing)?;
        Ok(ProbeSpec { kind, timing })
    }

    /// The guest-agent probe at Azure's timing (rota-config's defaults), for
    /// endpoints with no probe configured.
    pub fn guest_agent_default() -> ProbeSpec {
        ProbeSpec {
            kind: ProbeKind::GuestAgent,
            timing: Timing::from(&ProbeConfig::guest_agent_default()),
        }
    }

    /// "guest-agent" | "http" | "https" | "tcp".
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    pub fn kind(&self) -> &ProbeKind {
        &self.kind
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn interval(&self) -> Duration {
        self.timing.interval
    }

    pub fn timeout(&self) -> Duration {
        self.timing.timeout
    }

    pub fn attempt_timeout(&self) -> Duration {
        self.timing.attempt_timeout
    }
}

fn check_timing(t: &Timing) -> Result<(), ProbeError> {
    let bad = |what: &str| Err(ProbeError::Invalid(what.to_string()));
    if t.interval.is_zero() {
        return bad("interval must be greater than zero");
    }
    if t.timeout.is_zero() {
        return bad("timeout must be greater than zero");
    }
    if t.attempt_timeout.is_zero() {
        return bad("attempt_timeout must be greater than zero");
    }
    // One attempt in flight per target: an attempt that could outlive the interval
    // would silently stretch it.
    if t.attempt_timeout >= t.interval {
        return bad("attempt_timeout must be shorter than interval");
    }
    if t.rise == 0 {
        return bad("rise must be at least 1");
    }
    if t.fall == Some(0) {
        return bad("fall must be at least 1");
    }
    Ok(())
}

fn checked_path(path: &str) -> Result<String, ProbeError> {
    if !path.starts_with('/') {
        return Err(ProbeError::Invalid(format!(
            "probe path {path:?} must start with '/'"
        )));
    }
    path.parse::<PathAndQuery>()
        .map_err(|e| ProbeError::Invalid(format!("probe path {path:?}: {e}")))?;
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(protocol: ProbeProtocol) -> ProbeConfig {
        ProbeConfig {
            protocol,
            path: "/healthz".into(),
            ..ProbeConfig::guest_agent_default()
        }
    }

    #[test]
    fn kinds_have_their_names() {
        for (p, name) in [
            (ProbeProtocol::GuestAgent, "guest-agent"),
            (ProbeProtocol::Http, "http"),
            (ProbeProtocol::Https, "https"),
            (ProbeProtocol::Tcp, "tcp"),
        ] {
            let spec = ProbeSpec::from_config(&cfg(p)).unwrap();
            assert_eq!(spec.kind_name(), name);
            assert_eq!(spec.kind_name(), p.as_str());
        }
    }

    #[test]
    fn rejects_bad_timing_and_paths() {
        let mut c = cfg(ProbeProtocol::Http);
        c.attempt_timeout = c.interval;
        assert!(matches!(
            ProbeSpec::from_config(&c),
            Err(ProbeError::Invalid(_))
        ));
        let mut c = cfg(ProbeProtocol::Http);
        c.interval = Duration::ZERO;
        assert!(ProbeSpec::from_config(&c).is_err());
        let mut c = cfg(ProbeProtocol::Http);
        c.path = "healthz".into();
        assert!(ProbeSpec::from_config(&c).is_err());
        let mut c = cfg(ProbeProtocol::Http);
        c.rise = 0;
        assert!(ProbeSpec::from_config(&c).is_err());
        let mut c = cfg(ProbeProtocol::Https);
        c.tls.server_name = Some("not a name!".into());
        assert!(matches!(
            ProbeSpec::from_config(&c),
            Err(ProbeError::ServerName(_))
        ));
    }

    #[test]
    fn missing_ca_file_is_an_error() {
        let mut c = cfg(ProbeProtocol::Https);
        c.tls.ca_file = Some("/nonexistent/rota-ca.pem".into());
        assert!(matches!(
            ProbeSpec::from_config(&c),
            Err(ProbeError::CaFile { .. })
        ));
    }
}
