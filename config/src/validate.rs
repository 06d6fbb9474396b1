//! Checks the raw file against every rule and builds the typed [`Config`].
//!
//! Validation never stops at the first problem: each one becomes a
//! [`Diagnostic`] and checking goes on (with the default standing in for a
//! rejected value), so one run reports everything that is wrong.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Spanned, Value};

use crate::diagnostic::{closest, Diagnostic, SourceMap};
use crate::duration::{format_duration, parse_duration};
use crate::model::*;
use crate::raw::{
    Item, RawBackend, RawConfig, RawEndpoint, RawFabric, RawPool, RawProbe, RawRole, RawTls,
};
use crate::Loaded;

/// No duration setting may exceed this: it keeps later `Instant` arithmetic safe.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest duration a file can write; "at least this" means "more than zero".
const POSITIVE: Duration = Duration::from_millis(1);
/// The shortest idle timeout accepted (short ones are handy in tests).
const MIN_IDLE_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_NAME_LEN: usize = 64;
const MAX_WORKERS: i64 = 256;
const MAX_CONNECT_ATTEMPTS: i64 = 16;
const MAX_WEIGHT: i64 = 100;
const MAX_RISE_FALL: i64 = 100;
const PORTS: RangeInclusive<i64> = 1..=65535;
const MAX_HEARTBEAT_MISSES: i64 = 100;
const MAX_HOSTS_PER_FAULT_DOMAIN: i64 = 100;
/// Placeholders a role's command may use.
const PLACEHOLDERS: [&str; 5] = ["port", "instance", "role", "disk", "base"];

/// Validates `raw`, read from the source behind `map`. Relative paths in the
/// file are resolved against `base_dir` when one is given.
pub(crate) fn validate(
    raw: &RawConfig,
    map: SourceMap<'_>,
    base_dir: Option<&Path>,
) -> Result<Loaded, Vec<Diagnostic>> {
    let mut checker = Checker {
        map,
        base_dir,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let config = checker.config(raw);
    let Checker {
        mut errors,
        mut warnings,
        ..
    } = checker;
    if errors.is_empty() {
        sort(&mut warnings);
        Ok(Loaded { config, warnings })
    } else {
        sort(&mut errors);
        Err(errors)
    }
}

/// File order: by line, then column; ties keep the order they were found in.
fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics.sort_by_key(|d| (d.line, d.column));
}

/// A name that must be unique, remembered with where it was first used.
struct Seen {
    field: String,
    line: usize,
}

/// What the endpoints read so far have claimed.
struct EndpointsSeen {
    admin: SocketAddr,
    names: HashMap<String, Seen>,
    listeners: HashMap<String, Seen>,
}

/// Something an endpoint's `pool` may refer to: a `[[pool]]` or a `[[role]]`.
struct Target {
    name: String,
    role: bool,
}

struct Checker<'a> {
    map: SourceMap<'a>,
    base_dir: Option<&'a Path>,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl Checker<'_> {
    // ----- reporting -----

    fn error(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let diagnostic = self.map.diagnostic(span, field, message);
        self.errors.push(diagnostic);
    }

    fn warn(&mut self, span: &Range<usize>, field: &str, message: impl Into<String>) {
        let diagnostic = self.map.diagnostic(span, field, message);
        self.warnings.push(diagnostic);
    }

    /// Records `name` at `field`; if it was used before, reports `field` as a
    /// duplicate, naming the first use.
    fn unique(
        &mut self,
        seen: &mut HashMap<String, Seen>,
        name: String,
        span: &Range<usize>,
        field: &str,
        what: &str,
    ) {
        let line = self.map.line_column(span.start).0;
        if let Some(first) = seen.get(&name) {
            let message = format!(
                "expected a unique {what}, found {name:?} again (already used by {} on line {})",
                first.field, first.line
            );
            self.error(span, field, message);
        } else {
            let field = field.to_string();
            seen.insert(name, Seen { field, line });
        }
    }

    // ----- single values -----

    /// The item, or a "missing field" error pointing at `table`.
    fn required<'v>(
        &mut self,
        item: Option<&'v Item>,
        table: &Range<usize>,
        field: &str,
        expected: &str,
    ) -> Option<&'v Item> {
        if item.is_none() {
            self.error(table, field, format!("missing field, expected {expected}"));
        }
        item
    }

    fn string<'v>(&mut self, item: &'v Item, field: &str, expected: &str) -> Option<&'v str> {
        match item.get_ref() {
            Value::String(text) => Some(text),
            other => {
                let message = format!("expected {expected}, found {}", typed(other));
                self.error(&item.span(), field, message);
                None
            }
        }
    }

    fn integer(
        &mut self,
        item: &Item,
        field: &str,
        range: RangeInclusive<i64>,
        what: &str,
    ) -> Option<i64> {
        let expected = format!("{what} from {} to {}", range.start(), range.end());
        match item.get_ref() {
            Value::Integer(number) if range.contains(number) => Some(*number),
            Value::Integer(number) => {
                self.error(
                    &item.span(),
                    field,
                    format!("expected {expected}, found {number}"),
                );
                None
            }
            other => {
                let message = format!("expected {expected}, found {}", typed(other));
                self.error(&item.span(), field, message);
                None
            }
        }
    }

    fn u32_in(
        &mut self,
        item: &Item,
        field: &str,
        range: RangeInclusive<i64>,
        what: &str,
    ) -> Option<u32> {
        self.integer(item, field, range, what)
            .and_then(|number| u32::try_from(number).ok())
    }

    fn port(&mut self, item: &Item, field: &str) -> Option<u16> {
        self.integer(item, field, PORTS, "a port number")
            .and_then(|number| u16::try_from(number).ok())
    }

    fn boolean(&mut self, item: &Item, field: &str) -> Option<bool> {
        match item.get_ref() {
            Value::Boolean(flag) => Some(*flag),
            other => {
                let message = format!("expected true or false, found {}", typed(other));
                self.error(&item.span(), field, message);
                None
            }
        }
    }

    fn duration(&mut self, item: &Item, field: &str) -> Option<Duration> {
        let text = self.string(item, field, r#"a duration like "4m", "15s" or "250ms""#)?;
        match parse_duration(text) {
            Ok(duration) if duration <= MAX_DURATION => Some(duration),
            Ok(_) => {
                let message = format!(
                    "expected a duration of at most {}, found {text:?}",
                    format_duration(MAX_DURATION)
                );
                self.error(&item.span(), field, message);
                None
            }
            Err(message) => {
                self.error(&item.span(), field, message);
                None
            }
        }
    }

    /// A duration of at least `min`; `what` names it in the message.
    fn duration_at_least(
        &mut self,
        item: &Item,
        field: &str,
        min: Duration,
        what: &str,
    ) -> Option<Duration> {
        let duration = self.duration(item, field)?;
        if duration >= min {
            return Some(duration);
        }
        let expected = if min == POSITIVE {
            format!("{what} longer than 0s")
        } else {
            format!("{what} of at least {}", format_duration(min))
        };
        self.error(
            &item.span(),
            field,
            format!("expected {expected}, found {:?}", format_duration(duration)),
        );
        None
    }

    fn socket_addr(&mut self, item: &Item, field: &str) -> Option<SocketAddr> {
        const EXPECTED: &str = r#"a socket address like "127.0.0.1:8080" or "[::1]:8080""#;
        let text = self.string(item, field, EXPECTED)?;
        match text.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                let message = format!("expected {EXPECTED}, found {text:?}{}", address_hint(text));
                self.error(&item.span(), field, message);
                None
            }
        }
    }

    /// A name made of `[A-Za-z0-9_.-]`, 1 to 64 characters long.
    fn name(&mut self, item: &Item, field: &str, what: &str) -> Option<String> {
        let expected = format!(r#"{what} of 1 to {MAX_NAME_LEN} letters, digits, "_", "." or "-""#);
        let text = self.string(item, field, &expected)?;
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if text.is_empty() || text.len() > MAX_NAME_LEN || !text.chars().all(allowed) {
            self.error(
                &item.span(),
                field,
                format!("expected {expected}, found {text:?}"),
            );
            return None;
        }
        Some(text.to_string())
    }

    /// One of a fixed set of spellings.
    fn choice<T: Copy>(
        &mut self,
        item: &Item,
        field: &str,
        options: &[T],
        spelling: fn(T) -> &'static str,
    ) -> Option<T> {
        let quoted: Vec<String> = options
            .iter()
            .map(|option| format!("{:?}", spelling(*option)))
            .collect();
        let expected = format!("one of {}", quoted.join(", "));
        let text = self.string(item, field, &expected)?;
        if let Some(option) = options.iter().find(|option| spelling(**option) == text) {
            return Some(*option);
        }
        let names = options.iter().map(|option| spelling(*option));
        let hint = closest(text, names)
            .map(|name| format!(" (did you mean {name:?}?)"))
            .unwrap_or_default();
        self.error(
            &item.span(),
            field,
            format!("expected {expected}, found {text:?}{hint}"),
        );
        None
    }

    fn resolve_path(&self, path: &str) -> PathBuf {
        let path = PathBuf::from(path);
        match self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    // ----- the file, table by table -----

    /// The whole file. When errors were reported the result is incomplete
    /// (entries with missing or invalid required fields are left out).
    fn config(&mut self, raw: &RawConfig) -> Config {
        let workers = raw
            .workers
            .as_ref()
            .and_then(|item| self.integer(item, "workers", 1..=MAX_WORKERS, "a thread count"))
            .and_then(|number| usize::try_from(number).ok());
        let shutdown_grace = raw
            .shutdown_grace
            .as_ref()
            .and_then(|item| self.duration(item, "shutdown_grace"))
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        let admin = AdminConfig {
            listen: raw
                .admin
                .as_ref()
                .and_then(|admin| admin.listen.as_ref())
                .and_then(|item| self.socket_addr(item, "admin.listen"))
                .unwrap_or_else(|| AdminConfig::default().listen),
        };

        // Pools first: endpoints refer to them.
        let mut pool_names = HashMap::new();
        let mut pools = Vec::new();
        for (index, pool) in raw.pool.iter().enumerate() {
            let field = format!("pool[{index}]");
            if let Some(pool) = self.pool(pool.get_ref(), &pool.span(), &field, &mut pool_names) {
                pools.push(pool);
            }
        }
        // Roles share the pools' name space: an endpoint's `pool` names either.
        let mut role_names = HashMap::new();
        let mut roles = Vec::new();
        for (index, role) in raw.role.iter().enumerate() {
            let field = format!("role[{index}]");
            let built = self.role(role.get_ref(), &role.span(), &field, &mut role_names);
            if let (Some(role), Some(item)) = (&built, &role.get_ref().name) {
                if pools.iter().any(|pool| pool.name == role.name) {
                    let message = format!(
                        "expected a role name not used by a [[pool]], found {:?} (a pool has that name too, so an endpoint naming it would be ambiguous)",
                        role.name
                    );
                    self.error(&item.span(), &format!("{field}.name"), message);
                }
            }
            roles.extend(built);
        }
        let fabric = self.fabric(raw.fabric.as_ref(), &roles);

        let targets: Vec<Target> = pools
            .iter()
            .map(|pool| Target {
                name: pool.name.clone(),
                role: false,
            })
            // A role whose other settings are wrong still answers to its name, so
            // an endpoint naming it draws no second, misleading error.
            .chain(
                raw.role
                    .iter()
                    .filter_map(
                        |role| match role.get_ref().name.as_ref().map(Spanned::get_ref) {
                            Some(Value::String(name)) if role_names.contains_key(name) => {
                                Some(name.clone())
                            }
                            _ => None,
                        },
                    )
                    .map(|name| Target { name, role: true }),
            )
            .collect();

        if raw.endpoint.is_empty() {
            self.error(
                &(0..0),
                "endpoint",
                "missing field, expected at least one [[endpoint]] table",
            );
        }
        let mut seen = EndpointsSeen {
            admin: admin.listen,
            names: HashMap::new(),
            listeners: HashMap::new(),
        };
        let mut endpoints = Vec::new();
        for (index, endpoint) in raw.endpoint.iter().enumerate() {
            let field = format!("endpoint[{index}]");
            let built = self.endpoint(
                endpoint.get_ref(),
                &endpoint.span(),
                &field,
                &targets,
                &mut seen,
            );
            endpoints.extend(built);
        }

        Config {
            admin,
            workers,
            shutdown_grace,
            endpoints,
            pools,
            roles,
            fabric,
        }
    }

    /// Listen addresses must differ from each other and from the admin API's
    /// (port 0 asks the system for a free port, so it may repeat).
    fn check_listener(
        &mut self,
        listen: SocketAddr,
        admin: SocketAddr,
        item: &Item,
        field: &str,
        seen: &mut HashMap<String, Seen>,
    ) {
        if listen.port() == 0 {
            return;
        }
        if listen == admin {
            let message = format!(
                "expected a listen address not used by the admin API, found {:?} (the admin API listens there)",
                listen.to_string()
            );
            self.error(&item.span(), field, message);
        }
        self.unique(
            seen,
            listen.to_string(),
            &item.span(),
            field,
            "listen address",
        );
    }

    fn endpoint(
        &mut self,
        raw: &RawEndpoint,
        table: &Range<usize>,
        at: &str,
        targets: &[Target],
        seen: &mut EndpointsSeen,
    ) -> Option<EndpointConfig> {
        let field = |key: &str| format!("{at}.{key}");

        let name_item = self.required(raw.name.as_ref(), table, &field("name"), "an endpoint name");
        let name = name_item.and_then(|item| self.name(item, &field("name"), "an endpoint name"));
        if let (Some(name), Some(item)) = (&name, name_item) {
            let what = "endpoint name";
            self.unique(
                &mut seen.names,
                name.clone(),
                &item.span(),
                &field("name"),
                what,
            );
        }
        let listen_item = self.required(
            raw.listen.as_ref(),
            table,
            &field("listen"),
            "a listen address",
        );
        let listen = listen_item.and_then(|item| self.socket_addr(item, &field("listen")));
        if let (Some(listen), Some(item)) = (listen, listen_item) {
            let admin = seen.admin;
            self.check_listener(listen, admin, item, &field("listen"), &mut seen.listeners);
        }
        let pool = self
            .required(raw.pool.as_ref(), table, &field("pool"), "a pool name")
            .and_then(|item| self.reference(item, &field("pool"), targets));

        let target_port = raw
            .target_port
            .as_ref()
            .and_then(|item| self.port(item, &field("target_port")));
        let distribution = raw
            .distribution
            .as_ref()
            .and_then(|item| {
                self.choice(
                    item,
                    &field("distribution"),
                    &Distribution::ALL,
                    Distribution::as_str,
                )
            })
            .unwrap_or_default();
        let idle_timeout = raw
            .idle_timeout
            .as_ref()
            .and_then(|item| {
                self.duration_at_least(
                    item,
                    &field("idle_timeout"),
                    MIN_IDLE_TIMEOUT,
                    "an idle timeout",
                )
            })
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        let connect_timeout = raw
            .connect_timeout
            .as_ref()
            .and_then(|item| {
                self.duration_at_least(
                    item,
                    &field("connect_timeout"),
                    POSITIVE,
                    "a connect timeout",
                )
            })
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let connect_attempts = raw
            .connect_attempts
            .as_ref()
            .and_then(|item| {
                self.u32_in(
                    item,
                    &field("connect_attempts"),
                    1..=MAX_CONNECT_ATTEMPTS,
                    "a number of attempts",
                )
            })
            .unwrap_or(DEFAULT_CONNECT_ATTEMPTS);
        let all_down = raw
            .all_down
            .as_ref()
            .and_then(|item| self.choice(item, &field("all_down"), &AllDown::ALL, AllDown::as_str))
            .unwrap_or_default();
        let backlog = raw
            .backlog
            .as_ref()
            .and_then(|item| self.u32_in(item, &field("backlog"), 1..=65535, "a backlog"))
            .unwrap_or(DEFAULT_BACKLOG);
        let probe = raw
            .probe
            .as_ref()
            .and_then(|probe| self.probe(probe, table, &field("probe")));

        Some(EndpointConfig {
            name: name?,
            listen: listen?,
            pool: pool?,
            target_port,
            distribution,
            idle_timeout,
            connect_timeout,
            connect_attempts,
            all_down,
            backlog,
            probe,
        })
    }

    /// An endpoint's `pool`: the name of a pool or a role defined in the file.
    fn reference(&mut self, item: &Item, field: &str, targets: &[Target]) -> Option<String> {
        let name = self.name(item, field, "a pool name")?;
        if targets.iter().any(|target| target.name == name) {
            return Some(name);
        }
        let what = if targets.iter().any(|target| target.role) {
            "a pool or role"
        } else {
            "a pool"
        };
        let message = if targets.is_empty() {
            format!("expected the name of a pool or role, found {name:?} (the file defines no [[pool]] or [[role]])")
        } else {
            let known: Vec<String> = targets.iter().map(|t| format!("{:?}", t.name)).collect();
            let hint = closest(&name, targets.iter().map(|t| t.name.as_str()))
                .map(|close| format!(" (did you mean {close:?}?)"))
                .unwrap_or_default();
            format!(
                "expected the name of {what} ({}), found {name:?}{hint}",
                known.join(", ")
            )
        };
        self.error(&item.span(), field, message);
        None
    }

    /// `[endpoint.probe]`. `endpoint` locates the endpoint, for problems with
    /// a probe table that has no settings of its own to point at.
    fn probe(&mut self, raw: &RawProbe, endpoint: &Range<usize>, at: &str) -> Option<ProbeConfig> {
        let field = |key: &str| format!("{at}.{key}");
        let table = raw.first_span().unwrap_or_else(|| endpoint.clone());

        let protocol = self
            .required(
                raw.protocol.as_ref(),
                &table,
                &field("protocol"),
                r#"one of "guest-agent", "http", "https", "tcp""#,
            )
            .and_then(|item| {
                self.choice(
                    item,
                    &field("protocol"),
                    &ProbeProtocol::ALL,
                    ProbeProtocol::as_str,
                )
            });
        let port = raw
            .port
            .as_ref()
            .and_then(|item| self.port(item, &field("port")));

        let mut path = DEFAULT_PROBE_PATH.to_string();
        if let Some(item) = &raw.path {
            let text = self.string(item, &field("path"), r#"a path starting with "/""#);
            match (protocol, text) {
                (Some(protocol), Some(_)) if !protocol.is_http() => {
                    let message = format!(
                        r#"expected path only on an "http" or "https" probe, found it on a {:?} probe"#,
                        protocol.as_str()
                    );
                    self.error(&item.span(), &field("path"), message);
                }
                (_, Some(text)) if !text.starts_with('/') => {
                    let message = format!(r#"expected a path starting with "/", found {text:?}"#);
                    self.error(&item.span(), &field("path"), message);
                }
                (_, Some(text)) => path = text.to_string(),
                (_, None) => {}
            }
        }

        let interval = self.probe_interval(raw, &field("interval"));
        let timeout = self.probe_timeout(raw, interval, &field);
        let attempt_timeout = match &raw.attempt_timeout {
            None => default_attempt_timeout(interval),
            Some(item) => {
                let attempt = self.duration(item, &field("attempt_timeout"));
                match attempt {
                    Some(attempt) if !attempt.is_zero() && attempt < interval => attempt,
                    Some(attempt) => {
                        let message = format!(
                            "expected an attempt timeout longer than 0s and shorter than the interval ({}), found {:?}",
                            format_duration(interval),
                            format_duration(attempt)
                        );
                        self.error(&item.span(), &field("attempt_timeout"), message);
                        default_attempt_timeout(interval)
                    }
                    None => default_attempt_timeout(interval),
                }
            }
        };

        let rise = raw
            .rise
            .as_ref()
            .and_then(|item| self.u32_in(item, &field("rise"), 1..=MAX_RISE_FALL, "a count"))
            .unwrap_or(DEFAULT_PROBE_RISE);
        let fall = raw
            .fall
            .as_ref()
            .and_then(|item| self.u32_in(item, &field("fall"), 1..=MAX_RISE_FALL, "a count"));

        let tls = match &raw.tls {
            None => TlsConfig::default(),
            Some(tls) => {
                if let Some(protocol) = protocol.filter(|p| *p != ProbeProtocol::Https) {
                    let span = tls.first_span().unwrap_or_else(|| table.clone());
                    let message = format!(
                        r#"expected tls settings only on an "https" probe, found them on a {:?} probe"#,
                        protocol.as_str()
                    );
                    self.error(&span, &field("tls"), message);
                }
                self.tls(tls, &field("tls"))
            }
        };

        Some(ProbeConfig {
            protocol: protocol?,
            port,
            path,
            interval,
            timeout,
            attempt_timeout,
            rise,
            fall,
            tls,
        })
    }

    fn probe_interval(&mut self, raw: &RawProbe, field: &str) -> Duration {
        let Some(item) = &raw.interval else {
            return DEFAULT_PROBE_INTERVAL;
        };
        let Some(interval) = self.duration_at_least(item, field, POSITIVE, "a probe interval")
        else {
            return DEFAULT_PROBE_INTERVAL;
        };
        if interval < AZURE_MIN_PROBE_INTERVAL {
            let message = format!(
                "expected at least {} (Azure's smallest probe interval), found {:?}; \
                 rota accepts it, but Azure would not",
                format_duration(AZURE_MIN_PROBE_INTERVAL),
                format_duration(interval)
            );
            self.warn(&item.span(), field, message);
        }
        interval
    }

    /// The probe timeout, never shorter than `interval`.
    fn probe_timeout(
        &mut self,
        raw: &RawProbe,
        interval: Duration,
        field: &dyn Fn(&str) -> String,
    ) -> Duration {
        match &raw.timeout {
            Some(item) => match self.duration(item, &field("timeout")) {
                Some(timeout) if timeout >= interval => timeout,
                Some(timeout) => {
                    let message = format!(
                        "expected a timeout no shorter than the interval ({}), found {:?}",
                        format_duration(interval),
                        format_duration(timeout)
                    );
                    self.error(&item.span(), &field("timeout"), message);
                    interval
                }
                None => interval.max(DEFAULT_PROBE_TIMEOUT),
            },
            None => {
                if interval > DEFAULT_PROBE_TIMEOUT {
                    if let Some(item) = &raw.interval {
                        let message = format!(
                            "expected an interval no longer than the timeout ({} by default; \
                             set timeout as well), found {:?}",
                            format_duration(DEFAULT_PROBE_TIMEOUT),
                            format_duration(interval)
                        );
                        self.error(&item.span(), &field("interval"), message);
                    }
                }
                DEFAULT_PROBE_TIMEOUT.max(interval)
            }
        }
    }

    fn tls(&mut self, raw: &RawTls, at: &str) -> TlsConfig {
        let field = |key: &str| format!("{at}.{key}");
        let mut tls = TlsConfig::default();

        if let Some(item) = &raw.ca_file {
            if let Some(text) = self.string(item, &field("ca_file"), "a path to a PEM file") {
                if text.is_empty() {
                    let message = r#"expected a path to a PEM file, found """#;
                    self.error(&item.span(), &field("ca_file"), message);
                } else {
                    tls.ca_file = Some(self.resolve_path(text));
                }
            }
        }
        if let Some(item) = &raw.server_name {
            let expected = "a server name like \"example.internal\"";
            if let Some(text) = self.string(item, &field("server_name"), expected) {
                if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    let message = format!("expected {expected}, found {text:?}");
                    self.error(&item.span(), &field("server_name"), message);
                } else {
                    tls.server_name = Some(text.to_string());
                }
            }
        }
        if let Some(item) = &raw.insecure_skip_verify {
            let field = field("insecure_skip_verify");
            if let Some(skip) = self.boolean(item, &field) {
                if skip {
                    self.warn(
                        &item.span(),
                        &field,
                        "certificates will not be verified: this probe accepts any server certificate",
                    );
                }
                tls.insecure_skip_verify = skip;
            }
        }
        tls
    }

    fn pool(
        &mut self,
        raw: &RawPool,
        table: &Range<usize>,
        at: &str,
        names: &mut HashMap<String, Seen>,
    ) -> Option<PoolConfig> {
        let name_field = format!("{at}.name");
        let name = self
            .required(raw.name.as_ref(), table, &name_field, "a pool name")
            .and_then(|item| self.name(item, &name_field, "a pool name"));
        if let (Some(name), Some(item)) = (&name, &raw.name) {
            self.unique(names, name.clone(), &item.span(), &name_field, "pool name");
        }

        if raw.backend.is_empty() {
            self.error(
                table,
                &format!("{at}.backend"),
                "missing field, expected at least one [[pool.backend]] table",
            );
        }
        let mut backend_names = HashMap::new();
        let mut addresses = HashMap::new();
        let mut backends = Vec::new();
        for (index, backend) in raw.backend.iter().enumerate() {
            let field = format!("{at}.backend[{index}]");
            let (name, address) = self.backend_identity(backend.get_ref(), &backend.span(), &field);
            if let (Some(name), Some(item)) = (&name, &backend.get_ref().name) {
                let field = format!("{field}.name");
                let what = "backend name within the pool";
                self.unique(&mut backend_names, name.clone(), &item.span(), &field, what);
            }
            if let (Some(address), Some(item)) = (address, &backend.get_ref().address) {
                let field = format!("{field}.address");
                let what = "backend address within the pool";
                self.unique(
                    &mut addresses,
                    address.to_string(),
                    &item.span(),
                    &field,
                    what,
                );
            }
            let rest = self.backend_options(backend.get_ref(), &field);
            if let (Some(name), Some(address)) = (name, address) {
                let (weight, agent) = rest;
                backends.push(BackendConfig {
                    name,
                    address,
                    weight,
                    agent,
                });
            }
        }

        Some(PoolConfig {
            name: name?,
            backends,
        })
    }

    /// A backend's required name and address.
    fn backend_identity(
        &mut self,
        raw: &RawBackend,
        table: &Range<usize>,
        at: &str,
    ) -> (Option<String>, Option<SocketAddr>) {
        let field = |key: &str| format!("{at}.{key}");
        let name = self
            .required(raw.name.as_ref(), table, &field("name"), "a backend name")
            .and_then(|item| self.name(item, &field("name"), "a backend name"));
        let address = self
            .required(
                raw.address.as_ref(),
                table,
                &field("address"),
                "a socket address",
            )
            .and_then(|item| self.socket_addr(item, &field("address")));
        (name, address)
    }

    /// A backend's weight and agent address.
    fn backend_options(&mut self, raw: &RawBackend, at: &str) -> (u32, Option<SocketAddr>) {
        let field = |key: &str| format!("{at}.{key}");
        let weight = raw
            .weight
            .as_ref()
            .and_then(|item| self.u32_in(item, &field("weight"), 1..=MAX_WEIGHT, "a weight"))
            .unwrap_or(DEFAULT_BACKEND_WEIGHT);
        let agent = raw
            .agent
            .as_ref()
            .and_then(|item| self.socket_addr(item, &field("agent")));
        (weight, agent)
    }

    // ----- fabric roles -----

    fn role(
        &mut self,
        raw: &RawRole,
        table: &Range<usize>,
        at: &str,
        names: &mut HashMap<String, Seen>,
    ) -> Option<RoleConfig> {
        let field = |key: &str| format!("{at}.{key}");
        let name = self
            .required(raw.name.as_ref(), table, &field("name"), "a role name")
            .and_then(|item| self.name(item, &field("name"), "a role name"));
        if let (Some(name), Some(item)) = (&name, &raw.name) {
            self.unique(
                names,
                name.clone(),
                &item.span(),
                &field("name"),
                "role name",
            );
        }
        let max = i64::from(MAX_ROLE_INSTANCES);
        let instances = self
            .required(
                raw.instances.as_ref(),
                table,
                &field("instances"),
                "an instance count",
            )
            .and_then(|item| self.u32_in(item, &field("instances"), 1..=max, "an instance count"));
        let command = self
            .required(
                raw.command.as_ref(),
                table,
                &field("command"),
                r#"a command like ["rota", "demo-backend", "--listen", "127.0.0.1:{port}"]"#,
            )
            .and_then(|item| self.command(item, &field("command")));
        let max = i64::from(MAX_UPDATE_DOMAINS);
        let update_domains = raw
            .update_domains
            .as_ref()
            .and_then(|item| {
                self.u32_in(
                    item,
                    &field("update_domains"),
                    1..=max,
                    "an update-domain count",
                )
            })
            .unwrap_or(DEFAULT_UPDATE_DOMAINS);
        let max = i64::from(MAX_FAULT_DOMAINS);
        let fault_domains = raw
            .fault_domains
            .as_ref()
            .and_then(|item| {
                self.u32_in(
                    item,
                    &field("fault_domains"),
                    1..=max,
                    "a fault-domain count",
                )
            })
            .unwrap_or(DEFAULT_FAULT_DOMAINS);
        let base_image = raw.base_image.as_ref().and_then(|item| {
            let text = self.string(item, &field("base_image"), "a folder path")?;
            if text.is_empty() {
                self.error(
                    &item.span(),
                    &field("base_image"),
                    r#"expected a folder path, found """#,
                );
                return None;
            }
            Some(self.resolve_path(text))
        });
        let health_path = raw.health_path.as_ref().and_then(|item| {
            let text = self.string(item, &field("health_path"), r#"a path starting with "/""#)?;
            if !text.starts_with('/') || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                let message = format!(r#"expected a path starting with "/", found {text:?}"#);
                self.error(&item.span(), &field("health_path"), message);
                return None;
            }
            Some(text.to_string())
        });
        Some(RoleConfig {
            name: name?,
            instances: instances?,
            command: command?,
            update_domains,
            fault_domains,
            base_image,
            health_path,
        })
    }

    /// A role's command: a non-empty array of strings whose placeholders are known.
    fn command(&mut self, item: &Item, field: &str) -> Option<Vec<String>> {
        const EXPECTED: &str = "an array of strings, the program first";
        let Value::Array(values) = item.get_ref() else {
            let message = format!("expected {EXPECTED}, found {}", typed(item.get_ref()));
            self.error(&item.span(), field, message);
            return None;
        };
        if values.is_empty() {
            self.error(
                &item.span(),
                field,
                format!("expected {EXPECTED}, found an empty array"),
            );
            return None;
        }
        let mut command = Vec::new();
        for (index, value) in values.iter().enumerate() {
            let Value::String(text) = value else {
                let message = format!(
                    "expected {EXPECTED}, found {} at index {index}",
                    typed(value)
                );
                self.error(&item.span(), field, message);
                return None;
            };
            if let Some(unknown) = unknown_placeholder(text) {
                let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
                let message = format!(
                    "expected placeholders among {}, found {{{unknown}}} in {text:?}",
                    known.join(", ")
                );
                self.error(&item.span(), field, message);
                return None;
            }
            command.push(text.clone());
        }
        if command[0].is_empty() {
            self.error(
                &item.span(),
                field,
                "expected a program name first, found \"\"",
            );
            return None;
        }
        Some(command)
    }

    /// `[fabric]`: every setting, with defaults; `fault_domains` defaults to the
    /// largest count any role asks for.
    fn fabric(&mut self, raw: Option<&RawFabric>, roles: &[RoleConfig]) -> FabricConfig {
        let widest = roles
            .iter()
            .map(|role| role.fault_domains)
            .max()
            .unwrap_or(DEFAULT_FAULT_DOMAINS);
        let mut fabric = FabricConfig::with_state_dir(self.resolve_path(DEFAULT_FABRIC_STATE_DIR));
        fabric.fault_domains = widest;
        let Some(raw) = raw else {
            return fabric;
        };
        let field = |key: &str| format!("fabric.{key}");
        if let Some(item) = &raw.state_dir {
            if let Some(text) = self.string(item, &field("state_dir"), "a folder path") {
                if text.is_empty() {
                    self.error(
                        &item.span(),
                        &field("state_dir"),
                        r#"expected a folder path, found """#,
                    );
                } else {
                    fabric.state_dir = self.resolve_path(text);
                }
            }
        }
        if let Some(item) = &raw.heartbeat_interval {
            let what = "a heartbeat interval";
            if let Some(d) =
                self.duration_at_least(item, &field("heartbeat_interval"), MIN_IDLE_TIMEOUT, what)
            {
                fabric.heartbeat_interval = d;
            }
        }
        if let Some(item) = &raw.heartbeat_misses {
            let range = 1..=MAX_HEARTBEAT_MISSES;
            if let Some(n) = self.u32_in(item, &field("heartbeat_misses"), range, "a count") {
                fabric.heartbeat_misses = n;
            }
        }
        if let Some(item) = &raw.shutdown_grace {
            if let Some(d) = self.duration(item, &field("shutdown_grace")) {
                fabric.shutdown_grace = d;
            }
        }
        if let Some(item) = &raw.ready_deadline {
            let what = "a ready deadline";
            if let Some(d) = self.duration_at_least(item, &field("ready_deadline"), POSITIVE, what)
            {
                fabric.ready_deadline = d;
            }
        }
        if let Some(item) = &raw.drain_delay {
            if let Some(d) = self.duration(item, &field("drain_delay")) {
                fabric.drain_delay = d;
            }
        }
        if let Some(item) = &raw.update_mode {
            if let Some(mode) = self.choice(
                item,
                &field("update_mode"),
                &UpdateMode::ALL,
                UpdateMode::as_str,
            ) {
                fabric.update_mode = mode;
            }
        }
        if let Some(item) = &raw.fault_domains {
            let max = i64::from(MAX_FAULT_DOMAINS);
            if let Some(n) = self.u32_in(
                item,
                &field("fault_domains"),
                1..=max,
                "a fault-domain count",
            ) {
                if n < widest {
                    let message = format!(
                        "expected at least {widest} fault domains (a role spreads over that many), found {n}"
                    );
                    self.error(&item.span(), &field("fault_domains"), message);
                } else {
                    fabric.fault_domains = n;
                }
            }
        }
        if let Some(item) = &raw.hosts_per_fault_domain {
            let range = 1..=MAX_HOSTS_PER_FAULT_DOMAIN;
            if let Some(n) = self.u32_in(
                item,
                &field("hosts_per_fault_domain"),
                range,
                "a host count",
            ) {
                fabric.hosts_per_fault_domain = n;
            }
        }
        if let Some(item) = &raw.stop_instances_on_exit {
            if let Some(flag) = self.boolean(item, &field("stop_instances_on_exit")) {
                fabric.stop_instances_on_exit = flag;
            }
        }
        if let Some(item) = &raw.external {
            if let Some(flag) = self.boolean(item, &field("external")) {
                fabric.external = flag;
            }
        }
        fabric
    }
}

/// A value with its TOML type spelled out: `a string "three"`, `an integer 3`.
fn typed(value: &Value) -> String {
    match value {
        Value::String(text) => format!("a string {text:?}"),
        Value::Integer(number) => format!("an integer {number}"),
        Value::Float(number) => format!("a float {number:?}"),
        Value::Boolean(flag) => format!("a boolean {flag}"),
        Value::Datetime(datetime) => format!("a date {datetime}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// Why a string that is not a socket address might have been written.
fn address_hint(text: &str) -> &'static str {
    if text.parse::<IpAddr>().is_ok() {
        return " (the port is missing)";
    }
    match text.rsplit_once(':') {
        None => " (an IP address and a port are needed)",
        Some((host, _)) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
            " (put an IPv6 address in brackets, like \"[::1]:8080\")"
        }
        Some((host, _))
            if host.parse::<IpAddr>().is_err() && !host.starts_with('[') && !host.is_empty() =>
        {
            " (host names are not resolved: use an IP address)"
        }
        Some(_) => "",
    }
}

/// The first `{name}` in `text` that is not a known placeholder. `{{` and `}}`
/// are not special: commands rarely need braces, and a typo should not pass.
fn unknown_placeholder(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        // An unclosed brace is plain text.
        let close = after.find('}')?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Some(name.to_string());
        }
        rest = &after[close + 1..];
    }
    None
}
