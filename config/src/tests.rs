//! Tests of the public API: shipped examples, defaults and exact diagnostics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

/// A small valid file; the bad ones below are variations of it.
const GOOD: &str = r#"[[endpoint]]
name = "web"
listen = "127.0.0.1:8080"
pool = "web"

[[pool]]
name = "web"

[[pool.backend]]
name = "web-0"
address = "127.0.0.1:9001"
"#;

fn ok(source: &str) -> Loaded {
    match parse(source, "good.toml") {
        Ok(loaded) => loaded,
        Err(error) => panic!("expected the file to load, got:\n{error}"),
    }
}

fn errors(source: &str) -> Vec<Diagnostic> {
    match parse(source, "bad.toml") {
        Ok(loaded) => panic!("expected errors, the file loaded: {loaded:#?}"),
        Err(error) => error.diagnostics,
    }
}

fn only_error(source: &str) -> Diagnostic {
    let mut all = errors(source);
    assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
    all.remove(0)
}

#[track_caller]
fn check(diagnostic: &Diagnostic, line: usize, column: usize, field: &str, fragment: &str) {
    assert_eq!(diagnostic.file, "bad.toml", "{diagnostic}");
    assert_eq!(
        (diagnostic.line, diagnostic.column),
        (line, column),
        "{diagnostic}"
    );
    assert_eq!(diagnostic.field, field, "{diagnostic}");
    assert!(
        diagnostic.message.contains(fragment),
        "message {:?} lacks {fragment:?}",
        diagnostic.message
    );
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

// ----- valid files -----

#[test]
fn every_example_loads() {
    let mut loaded = 0;
    let entries = std::fs::read_dir(examples_dir()).expect("examples/ exists");
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // `bad*.toml` files, if any, are deliberately invalid demonstrations.
        if path.extension().is_some_and(|ext| ext == "toml") && !name.starts_with("bad") {
            if let Err(error) = load(&path) {
                panic!("{} does not load:\n{error}", path.display());
            }
            loaded += 1;
        }
    }
    assert!(
        loaded >= 2,
        "expected at least rota.toml and static-tcp.toml"
    );
}

#[test]
fn full_example_has_the_documented_shape() {
    let loaded = load(&examples_dir().join("rota.toml")).expect("rota.toml loads");
    assert!(loaded.warnings.is_empty(), "{:#?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.endpoints.len(), 1);
    let endpoint = &config.endpoints[0];
    let probe = endpoint.probe.as_ref().expect("a probe");
    assert_eq!(probe.protocol, ProbeProtocol::Http);
    assert_eq!(probe.path, "/health");
    let pool = config.pool(&endpoint.pool).expect("the endpoint's pool");
    let addresses: Vec<SocketAddr> = pool.backends.iter().map(|b| b.address).collect();
    let expected: Vec<SocketAddr> = (9001..=9003)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    assert_eq!(addresses, expected);
}

#[test]
fn tcp_example_uses_round_robin() {
    let loaded = load(&examples_dir().join("static-tcp.toml")).expect("static-tcp.toml loads");
    let endpoint = &loaded.config.endpoints[0];
    assert_eq!(endpoint.distribution, Distribution::RoundRobin);
    let probe = endpoint.probe.as_ref().expect("a probe");
    assert_eq!(probe.protocol, ProbeProtocol::Tcp);
}

#[test]
fn defaults_are_applied() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"http\"\n",
    );
    let loaded = ok(&source);
    assert!(loaded.warnings.is_empty());
    let config = loaded.config;
    assert_eq!(
        config.admin.listen,
        SocketAddr::from(([127, 0, 0, 1], 9090))
    );
    assert_eq!(config.workers, None);
    assert_eq!(config.shutdown_grace, Duration::from_secs(30));

    let endpoint = &config.endpoints[0];
    assert_eq!(endpoint.name, "web");
    assert_eq!(endpoint.target_port, None);
    assert_eq!(endpoint.distribution, Distribution::FiveTuple);
    assert_eq!(endpoint.idle_timeout, Duration::from_secs(240));
    assert_eq!(endpoint.connect_timeout, Duration::from_secs(5));
    assert_eq!(endpoint.connect_attempts, 3);
    assert_eq!(endpoint.all_down, AllDown::Refuse);
    assert_eq!(endpoint.backlog, 4096);

    let probe = endpoint.probe.as_ref().expect("a probe");
    assert_eq!(probe.port, None);
    assert_eq!(probe.path, "/");
    assert_eq!(probe.interval, Duration::from_secs(15));
    assert_eq!(probe.timeout, Duration::from_secs(31));
    assert_eq!(probe.attempt_timeout, Duration::from_secs(5));
    assert_eq!(probe.rise, 1);
    assert_eq!(probe.fall, None);
    assert_eq!(probe.tls, TlsConfig::default());

    let backend = &config.pools[0].backends[0];
    assert_eq!(backend.weight, 1);
    assert_eq!(backend.agent, None);
}

#[test]
fn no_probe_table_means_no_probe() {
    let config = ok(GOOD).config;
    assert_eq!(config.endpoints[0].probe, None);
}

#[test]
fn guest_agent_default_matches_a_parsed_guest_agent_probe() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nprobe = { protocol = \"guest-agent\" }\n",
    );
    let config = ok(&source).config;
    assert_eq!(
        config.endpoints[0].probe,
        Some(ProbeConfig::guest_agent_default())
    );
}

#[test]
fn attempt_timeout_defaults_to_four_fifths_of_a_short_interval() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nprobe = { protocol = \"tcp\", interval = \"5s\" }\n",
    );
    let probe = ok(&source).config.endpoints[0].probe.clone();
    assert_eq!(
        probe.map(|p| p.attempt_timeout),
        Some(Duration::from_secs(4))
    );
}

#[test]
fn every_setting_is_read() {
    let source = r#"
workers = 4
shutdown_grace = "1m30s"
[admin]
listen = "[::1]:9191"

[[endpoint]]
name = "api.v2"
listen = "0.0.0.0:0"
pool = "api"
target_port = 8443
distribution = "least-connections"
idle_timeout = "250ms"
connect_timeout = "1s500ms"
connect_attempts = 16
all_down = "fail-open"
backlog = 128
[endpoint.probe]
protocol = "https"
port = 9443
path = "/ready"
interval = "10s"
timeout = "1m"
attempt_timeout = "2s"
rise = 2
fall = 3
[endpoint.probe.tls]
ca_file = "/etc/rota/ca.pem"
server_name = "api.internal"
insecure_skip_verify = false

[[endpoint]]
name = "api-2"
listen = "0.0.0.0:0"
pool = "api"

[[pool]]
name = "api"
[[pool.backend]]
name = "a"
address = "10.0.0.1:443"
weight = 100
agent = "10.0.0.1:9101"
"#;
    let config = ok(source).config;
    assert_eq!(config.workers, Some(4));
    assert_eq!(config.shutdown_grace, Duration::from_secs(90));
    assert_eq!(config.admin.listen, "[::1]:9191".parse().expect("addr"));
    let endpoint = &config.endpoints[0];
    assert_eq!(endpoint.target_port, Some(8443));
    assert_eq!(endpoint.distribution, Distribution::LeastConnections);
    assert_eq!(endpoint.idle_timeout, Duration::from_millis(250));
    assert_eq!(endpoint.connect_timeout, Duration::from_millis(1500));
    assert_eq!(endpoint.connect_attempts, 16);
    assert_eq!(endpoint.all_down, AllDown::FailOpen);
    assert_eq!(endpoint.backlog, 128);
    let probe = endpoint.probe.as_ref().expect("probe");
    assert_eq!(probe.protocol, ProbeProtocol::Https);
    assert_eq!(probe.port, Some(9443));
    assert_eq!(probe.path, "/ready");
    assert_eq!(probe.interval, Duration::from_secs(10));
    assert_eq!(probe.timeout, Duration::from_secs(60));
    assert_eq!(probe.attempt_timeout, Duration::from_secs(2));
    assert_eq!((probe.rise, probe.fall), (2, Some(3)));
    assert_eq!(probe.tls.ca_file, Some(PathBuf::from("/etc/rota/ca.pem")));
    assert_eq!(probe.tls.server_name.as_deref(), Some("api.internal"));
    assert!(!probe.tls.insecure_skip_verify);
    // Port 0 may repeat.
    assert_eq!(config.endpoints[1].listen, endpoint.listen);
    let backend = &config.pools[0].backends[0];
    assert_eq!(backend.weight, 100);
    assert_eq!(backend.agent, Some("10.0.0.1:9101".parse().expect("addr")));
}

#[test]
fn relative_ca_file_resolves_against_the_files_folder() {
    let folder = std::env::temp_dir().join(format!("rota-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("temp folder");
    let file = folder.join("tls.toml");
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"https\"\n[endpoint.probe.tls]\nca_file = \"certs/ca.pem\"\n",
    );
    std::fs::write(&file, source).expect("write temp file");
    let loaded = load(&file);
    let _ = std::fs::remove_dir_all(&folder);
    let config = loaded.expect("loads").config;
    let probe = config.endpoints[0].probe.as_ref().expect("probe");
    assert_eq!(probe.tls.ca_file, Some(folder.join("certs/ca.pem")));
}

// ----- warnings -----

#[test]
fn short_interval_draws_a_warning() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"tcp\"\ninterval = \"1s\"\n",
    );
    let loaded = ok(&source);
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    let warning = &loaded.warnings[0];
    assert_eq!((warning.line, warning.column), (7, 12));
    assert_eq!(warning.field, "endpoint[0].probe.interval");
    assert!(warning.message.contains("Azure"), "{warning}");
    assert!(warning.message.contains("\"1s\""), "{warning}");
    let probe = loaded.config.endpoints[0].probe.as_ref().expect("probe");
    assert_eq!(probe.interval, Duration::from_secs(1));
    assert_eq!(probe.attempt_timeout, Duration::from_millis(800));
}

#[test]
fn skipping_verification_draws_a_warning() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"https\"\n[endpoint.probe.tls]\ninsecure_skip_verify = true\n",
    );
    let loaded = ok(&source);
    assert_eq!(loaded.warnings.len(), 1, "{:#?}", loaded.warnings);
    let warning = &loaded.warnings[0];
    assert_eq!(warning.field, "endpoint[0].probe.tls.insecure_skip_verify");
    assert_eq!((warning.line, warning.column), (8, 24));
    assert!(warning
        .message
        .contains("certificates will not be verified"));
    let probe = loaded.config.endpoints[0].probe.as_ref().expect("probe");
    assert!(probe.tls.insecure_skip_verify);
}

// ----- errors -----

#[test]
fn unknown_distribution() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\ndistribution = \"random\"\n",
    );
    check(
        &only_error(&source),
        5,
        16,
        "endpoint[0].distribution",
        r#"expected one of "five-tuple", "source-ip", "source-ip-protocol", "round-robin", "least-connections", found "random""#,
    );
}

#[test]
fn bad_duration() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nidle_timeout = \"4 minutes\"\n",
    );
    let error = only_error(&source);
    check(
        &error,
        5,
        16,
        "endpoint[0].idle_timeout",
        r#"expected a duration like "4m", "15s" or "250ms", found "4 minutes""#,
    );
    assert!(error.to_string().starts_with(
        "bad.toml:5:16: endpoint[0].idle_timeout: expected a duration like \"4m\", \"15s\" or \"250ms\", found \"4 minutes\""
    ));
}

#[test]
fn bad_address() {
    let source = GOOD.replace("127.0.0.1:8080", "localhost");
    check(
        &only_error(&source),
        3,
        10,
        "endpoint[0].listen",
        r#"expected a socket address like "127.0.0.1:8080" or "[::1]:8080", found "localhost""#,
    );
    let source = GOOD.replace("127.0.0.1:9001", "backend.internal:9001");
    check(
        &only_error(&source),
        11,
        11,
        "pool[0].backend[0].address",
        "host names are not resolved",
    );
}

#[test]
fn unknown_field() {
    let source = GOOD.replace("listen =", "listne =");
    check(
        &only_error(&source),
        3,
        1,
        "endpoint[0].listne",
        r#"unknown field "listne" (did you mean "listen"?), expected one of "name", "listen""#,
    );
}

#[test]
fn unknown_field_in_a_nested_table() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"tcp\"\nintervall = \"5s\"\n",
    );
    check(
        &only_error(&source),
        7,
        1,
        "endpoint[0].probe.intervall",
        r#"(did you mean "interval"?)"#,
    );
}

#[test]
fn unknown_table() {
    let source = format!("{GOOD}\n[[service]]\nname = \"web\"\n");
    check(
        &only_error(&source),
        13,
        3,
        "service",
        r#"unknown field "service", expected one of "workers""#,
    );
}

#[test]
fn wrong_type() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nconnect_attempts = \"three\"\n",
    );
    check(
        &only_error(&source),
        5,
        20,
        "endpoint[0].connect_attempts",
        r#"expected a number of attempts from 1 to 16, found a string "three""#,
    );
}

#[test]
fn wrong_table_shape() {
    // `probe` must be a table, and `endpoint` an array of tables.
    let source = GOOD.replace("pool = \"web\"\n", "pool = \"web\"\nprobe = 5\n");
    check(
        &only_error(&source),
        5,
        9,
        "endpoint[0].probe",
        "expected a table, found an integer 5",
    );
    let source = GOOD.replace("[[endpoint]]", "[endpoint]");
    check(
        &only_error(&source),
        1,
        1,
        "endpoint",
        "expected an array of tables like [[endpoint]], found a table",
    );
}

#[test]
fn toml_syntax_error() {
    let source = GOOD.replace("name = \"web-0\"", "name = \"web-0");
    let error = only_error(&source);
    assert_eq!(error.line, 10, "{error}");
    assert_eq!(error.field, "");
    assert!(!error.message.contains('\n'), "{error}");
}

#[test]
fn missing_pool_reference() {
    let source = GOOD.replace("pool = \"web\"", "pool = \"wbe\"");
    check(
        &only_error(&source),
        4,
        8,
        "endpoint[0].pool",
        r#"expected the name of a pool ("web"), found "wbe" (did you mean "web"?)"#,
    );
}

#[test]
fn missing_required_fields() {
    let source = GOOD.replace("pool = \"web\"\n", "");
    check(
        &only_error(&source),
        1,
        1,
        "endpoint[0].pool",
        "missing field, expected a pool name",
    );
    let source = GOOD.replace("address = \"127.0.0.1:9001\"\n", "");
    check(
        &only_error(&source),
        9,
        1,
        "pool[0].backend[0].address",
        "missing field, expected a socket address",
    );
    let all = errors("workers = 2\n");
    check(
        &all[0],
        1,
        1,
        "endpoint",
        "missing field, expected at least one [[endpoint]] table",
    );
}

#[test]
fn duplicate_endpoint_names() {
    let source = GOOD.replace(
        "\n[[pool]]",
        "\n[[endpoint]]\nname = \"web\"\nlisten = \"127.0.0.1:8081\"\npool = \"web\"\n\n[[pool]]",
    );
    check(
        &only_error(&source),
        7,
        8,
        "endpoint[1].name",
        r#"expected a unique endpoint name, found "web" again (already used by endpoint[0].name on line 2)"#,
    );
}

#[test]
fn duplicate_listen_addresses_and_backends() {
    let source = GOOD
        .replace(
            "\n[[pool]]",
            "\n[[endpoint]]\nname = \"web2\"\nlisten = \"127.0.0.1:8080\"\npool = \"web\"\n\n[[pool]]",
        )
        .replace(
            "address = \"127.0.0.1:9001\"\n",
            "address = \"127.0.0.1:9001\"\n[[pool.backend]]\nname = \"web-0\"\naddress = \"127.0.0.1:9001\"\n",
        );
    let all = errors(&source);
    assert_eq!(all.len(), 3, "{all:#?}");
    check(
        &all[0],
        8,
        10,
        "endpoint[1].listen",
        r#"expected a unique listen address, found "127.0.0.1:8080" again"#,
    );
    check(
        &all[1],
        18,
        8,
        "pool[0].backend[1].name",
        "unique backend name within the pool",
    );
    check(
        &all[2],
        19,
        11,
        "pool[0].backend[1].address",
        "unique backend address within the pool",
    );
}

#[test]
fn timeout_shorter_than_interval() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"tcp\"\ninterval = \"20s\"\ntimeout = \"10s\"\n",
    );
    check(
        &only_error(&source),
        8,
        11,
        "endpoint[0].probe.timeout",
        r#"expected a timeout no shorter than the interval (20s), found "10s""#,
    );
}

#[test]
fn attempt_timeout_not_shorter_than_interval() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\nprobe = { protocol = \"tcp\", interval = \"5s\", attempt_timeout = \"5s\" }\n",
    );
    check(
        &only_error(&source),
        5,
        64,
        "endpoint[0].probe.attempt_timeout",
        "shorter than the interval (5s)",
    );
}

#[test]
fn path_on_a_tcp_probe() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"tcp\"\npath = \"/health\"\n",
    );
    check(
        &only_error(&source),
        7,
        8,
        "endpoint[0].probe.path",
        r#"expected path only on an "http" or "https" probe, found it on a "tcp" probe"#,
    );
}

#[test]
fn tls_on_an_http_probe() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\nprotocol = \"http\"\n[endpoint.probe.tls]\nserver_name = \"x\"\n",
    );
    check(
        &only_error(&source),
        8,
        15,
        "endpoint[0].probe.tls",
        r#"expected tls settings only on an "https" probe, found them on a "http" probe"#,
    );
}

#[test]
fn missing_probe_protocol_points_into_the_probe() {
    let source = GOOD.replace(
        "pool = \"web\"\n",
        "pool = \"web\"\n[endpoint.probe]\ninterval = \"5s\"\n",
    );
    check(
        &only_error(&source),
        6,
        12,
        "endpoint[0].probe.protocol",
        r#"missing field, expected one of "guest-agent", "http", "https", "tcp""#,
    );
}

#[test]
fn out_of_range_numbers() {
    let source = format!("workers = 0\n{GOOD}").replace(
        "address = \"127.0.0.1:9001\"\n",
        "address = \"127.0.0.1:9001\"\nweight = 101\n",
    );
    let all = errors(&source);
    assert_eq!(all.len(), 2, "{all:#?}");
    check(
        &all[0],
        1,
        11,
        "workers",
        "expected a thread count from 1 to 256, found 0",
    );
    check(
        &all[1],
        13,
        10,
        "pool[0].backend[0].weight",
        "expected a weight from 1 to 100, found 101",
    );
}

#[test]
fn three_independent_errors_are_all_reported() {
    let source = r#"[[endpoint]]
name = "web"
listen = "127.0.0.1:80800"
pool = "web"
distribution = "random"

[[pool]]
name = "web"

[[pool.backend]]
name = "web 0"
address = "127.0.0.1:9001"
"#;
    let error = parse(source, "bad.toml").expect_err("three errors");
    let all = &error.diagnostics;
    assert_eq!(all.len(), 3, "{error}");
    check(
        &all[0],
        3,
        10,
        "endpoint[0].listen",
        "found \"127.0.0.1:80800\"",
    );
    check(
        &all[1],
        5,
        16,
        "endpoint[0].distribution",
        "found \"random\"",
    );
    check(&all[2], 11, 8, "pool[0].backend[0].name", "found \"web 0\"");
    // Display: one diagnostic per line, in file order.
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("bad.toml:3:10: endpoint[0].listen: "));
    assert!(lines[2].starts_with("bad.toml:11:8: pool[0].backend[0].name: "));
}

#[test]
fn pool_without_backends() {
    let source = "[[endpoint]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\n";
    check(
        &only_error(source),
        5,
        1,
        "pool[0].backend",
        "missing field, expected at least one [[pool.backend]] table",
    );
}

#[test]
fn unreadable_file_is_named() {
    let path = examples_dir().join("does-not-exist.toml");
    let error = load(&path).expect_err("missing file");
    assert_eq!(error.diagnostics.len(), 1);
    let diagnostic = &error.diagnostics[0];
    assert_eq!(diagnostic.file, path.display().to_string());
    assert_eq!(diagnostic.line, 0);
    assert!(diagnostic.message.starts_with("cannot read the file: "));
    assert!(error.to_string().starts_with(&path.display().to_string()));
}

#[test]
fn public_parse_duration() {
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert!(parse_duration("").is_err());
    assert!(parse_duration("-1s").is_err());
    assert!(parse_duration("3").is_err());
    assert!(parse_duration("3y").is_err());
}

#[test]
fn no_input_panics() {
    // Every prefix of the full example, and a few hostile files: each must
    // give a result (either one), never a panic.
    let full = std::fs::read_to_string(examples_dir().join("rota.toml")).expect("example");
    let cuts = (0..=full.len()).filter(|cut| full.is_char_boundary(*cut));
    for cut in cuts.step_by(3) {
        let _ = parse(&full[..cut], "cut.toml");
    }
    for hostile in [
        "",
        "\u{feff}",
        "=",
        "[[endpoint]]\n[[endpoint]]\n",
        "endpoint = [1, \"x\", {}]\n",
        "endpoint = [{ probe = { tls = { ca_file = [] } } }]\n",
        "when = 1979-05-27T07:32:00Z\n[endpoint]\n",
        "[[endpoint]]\nidle_timeout = \"99999999999999999999h\"\ninterval = 5\n",
        "[[endpoint]]\nprobe.interval = \"5000000000h\"\nprobe.protocol = \"tcp\"\n",
        "[[endpoint]]\nname = \"\u{e9}\u{e9}\"\nlisten = \"\u{e9}\"\nbacklog = -1\n",
        "[admin]\nlisten = 1.5\n[[pool]]\nbackend = \"x\"\n",
    ] {
        let _ = parse(hostile, "hostile.toml");
    }
}

// ----- fabric roles -----

/// An endpoint served by a role instead of a pool.
const ROLE: &str = r#"[[endpoint]]
name = "web"
listen = "127.0.0.1:8080"
pool = "web"

[[role]]
name = "web"
instances = 3
command = ["rota", "demo-backend", "--listen", "127.0.0.1:{port}", "--name", "{instance}"]
"#;

#[test]
fn role_defaults_and_endpoint_reference() {
    let loaded = ok(ROLE);
    let role = loaded.config.role("web").expect("role web");
    assert_eq!(role.instances, 3);
    assert_eq!(role.update_domains, DEFAULT_UPDATE_DOMAINS);
    assert_eq!(role.fault_domains, DEFAULT_FAULT_DOMAINS);
    assert_eq!(role.base_image, None);
    assert_eq!(role.health_path, None);
    assert_eq!(role.command[3], "127.0.0.1:{port}");
    let fabric = &loaded.config.fabric;
    assert_eq!(fabric.shutdown_grace, Duration::from_secs(300));
    assert_eq!(fabric.ready_deadline, Duration::from_secs(900));
    assert_eq!(fabric.update_mode, UpdateMode::Auto);
    assert_eq!(fabric.fault_domains, 2);
    assert!(fabric.state_dir.ends_with(DEFAULT_FABRIC_STATE_DIR));
    assert!(loaded.config.pools.is_empty());
}

#[test]
fn fabric_settings_are_read() {
    let source = format!(
        "{ROLE}update_domains = 20\nfault_domains = 3\nhealth_path = \"/health\"\n\n[fabric]\nstate_dir = \"/tmp/x\"\nheartbeat_interval = \"200ms\"\nheartbeat_misses = 2\nshutdown_grace = \"10s\"\nready_deadline = \"30s\"\ndrain_delay = \"100ms\"\nupdate_mode = \"manual\"\nhosts_per_fault_domain = 4\nstop_instances_on_exit = true\nexternal = true\n"
    );
    let config = ok(&source).config;
    let role = config.role("web").unwrap();
    assert_eq!((role.update_domains, role.fault_domains), (20, 3));
    assert_eq!(role.health_path.as_deref(), Some("/health"));
    let f = &config.fabric;
    assert_eq!(f.state_dir, PathBuf::from("/tmp/x"));
    assert_eq!(f.heartbeat_interval, Duration::from_millis(200));
    assert_eq!(f.heartbeat_misses, 2);
    assert_eq!(f.shutdown_grace, Duration::from_secs(10));
    assert_eq!(f.ready_deadline, Duration::from_secs(30));
    assert_eq!(f.drain_delay, Duration::from_millis(100));
    assert_eq!(f.update_mode, UpdateMode::Manual);
    assert_eq!(f.fault_domains, 3, "defaults to the widest role");
    assert_eq!(f.hosts_per_fault_domain, 4);
    assert!(f.stop_instances_on_exit);
    assert!(f.external);
}

#[test]
fn role_and_pool_may_not_share_a_name() {
    let source = format!("{ROLE}\n[[pool]]\nname = \"web\"\n[[pool.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n");
    check(
        &only_error(&source),
        7,
        8,
        "role[0].name",
        r#"expected a role name not used by a [[pool]], found "web""#,
    );
}

#[test]
fn unknown_reference_names_pools_and_roles() {
    let source = ROLE.replace("pool = \"web\"", "pool = \"wbe\"");
    check(
        &only_error(&source),
        4,
        8,
        "endpoint[0].pool",
        r#"expected the name of a pool or role ("web"), found "wbe" (did you mean "web"?)"#,
    );
}

#[test]
fn bad_role_settings_are_all_reported() {
    let source = ROLE
        .replace("instances = 3", "instances = 0")
        .replace("{instance}", "{name}")
        + "update_domains = 21\n\n[fabric]\nupdate_mode = \"rolling\"\n";
    let all = errors(&source);
    assert_eq!(all.len(), 4, "{all:#?}");
    check(
        &all[0],
        8,
        13,
        "role[0].instances",
        "expected an instance count from 1 to 200, found 0",
    );
    check(
        &all[1],
        9,
        11,
        "role[0].command",
        "found {name} in \"{name}\"",
    );
    check(
        &all[2],
        10,
        18,
        "role[0].update_domains",
        "from 1 to 20, found 21",
    );
    check(
        &all[3],
        13,
        15,
        "fabric.update_mode",
        r#"expected one of "auto", "manual", found "rolling""#,
    );
}

#[test]
fn role_without_command() {
    let source = ROLE.replace("command = [", "# [");
    check(
        &only_error(&source),
        6,
        1,
        "role[0].command",
        "missing field, expected a command",
    );
}
