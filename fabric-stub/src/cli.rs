//! `rota fabric ...`: run a fabric alone, or send an operation to a running one over its admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::fabric::{Fabric, FabricSettings, RoleSpec};

/// `rota fabric <command>`.
#[derive(Clone, Debug, clap::Args)]
pub struct FabricArgs {
    /// The admin API of the running rota (or `rota fabric run`).
    #[arg(long, global = true, default_value = rota_config::DEFAULT_ADMIN_LISTEN)]
    pub admin: SocketAddr,
    #[command(subcommand)]
    pub command: FabricCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum FabricCommand {
    /// Run the fabric of a config file without a balancer; `--admin` is where its API listens.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Roles, hosts, instances and the current operation.
    Status,
    /// The published topology.
    Topology,
    /// Every instance start with its reason.
    History,
    /// Deploy a new role: `rota fabric deploy web2 3 -- rota demo-backend --listen 127.0.0.1:{port} --name {instance}`.
    Deploy {
        role: String,
        instances: u32,
        #[arg(long)]
        update_domains: Option<u32>,
        #[arg(long)]
        fault_domains: Option<u32>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Set a role's instance count (removed instances drain first).
    Scale { role: String, instances: u32 },
    /// Restart an instance, keeping its differencing disk.
    Reboot { instance: String },
    /// Restart an instance on a new, empty differencing disk.
    Reimage { instance: String },
    /// Fail a host: its processes die, its instances move.
    FailHost { host: String },
    /// Fail every host of a fault domain.
    FailFaultDomain { fault_domain: u32 },
    /// Return a failed host to service.
    RepairHost { host: String },
    /// Rolling update, one update domain at a time; a new command after `--`.
    Update {
        role: String,
        /// `auto` or `manual` (wait for `rota fabric continue` between update domains).
        #[arg(long)]
        mode: Option<String>,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Let a manual update go on to the next update domain.
    Continue,
    /// Reboot every host, one at a time.
    HostUpdate,
}

/// Runs a `rota fabric` command. `shutdown` ends `run`.
pub async fn run(args: FabricArgs, shutdown: CancellationToken) -> Result<(), String> {
    let (method, path, body) = match args.command {
        FabricCommand::Run { config } => return run_fabric(&config, args.admin, shutdown).await,
        FabricCommand::Status => ("GET", String::new(), None),
        FabricCommand::Topology => ("GET", "/topology".into(), None),
        FabricCommand::History => ("GET", "/history".into(), None),
        FabricCommand::Deploy {
            role,
            instances,
            update_domains,
            fault_domains,
            command,
        } => (
            "POST",
            "/roles".into(),
            Some(
                json!({"name": role, "instances": instances, "command": command,
                        "update_domains": update_domains, "fault_domains": fault_domains}),
            ),
        ),
        FabricCommand::Scale { role, instances } => (
            "POST",
            format!("/roles/{role}/scale"),
            Some(json!({"instances": instances})),
        ),
        FabricCommand::Reboot { instance } => {
            ("POST", format!("/instances/{instance}/reboot"), None)
        }
        FabricCommand::Reimage { instance } => {
            ("POST", format!("/instances/{instance}/reimage"), None)
        }
        FabricCommand::FailHost { host } => ("POST", format!("/hosts/{host}/fail"), None),
        FabricCommand::RepairHost { host } => ("POST", format!("/hosts/{host}/repair"), None),
        FabricCommand::FailFaultDomain { fault_domain } => {
            ("POST", format!("/fault-domains/{fault_domain}/fail"), None)
        }
        FabricCommand::Update {
            role,
            mode,
            command,
        } => {
            let command = (!command.is_empty()).then_some(command);
            (
                "POST",
                format!("/roles/{role}/update"),
                Some(json!({"command": command, "mode": mode})),
            )
        }
        FabricCommand::Continue => ("POST", "/continue".into(), None),
        FabricCommand::HostUpdate => ("POST", "/host-update".into(), None),
    };
    let path = format!("{}{path}", crate::api::PREFIX);
    let body = body.map(|b| Bytes::from(b.to_string()));
    let (code, answer) =
        crate::http::request(args.admin, method, &path, body, Duration::from_secs(30)).await?;
    let text = match serde_json::from_slice::<serde_json::Value>(&answer) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&answer).into_owned(),
    };
    println!("{text}");
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("{method} {path}: http {code}"))
    }
}

async fn run_fabric(
    config: &std::path::Path,
    admin: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let loaded = rota_config::load(config).map_err(|e| e.to_string())?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    let settings = FabricSettings::from_config(&config.fabric);
    let roles: Vec<RoleSpec> = config.roles.iter().map(RoleSpec::from).collect();
    let registry = prometheus::Registry::new();
    let listener = tokio::net::TcpListener::bind(admin)
        .await
        .map_err(|e| format!("cannot listen on {admin}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let fabric = Fabric::start(settings, roles, &registry)
        .await
        .map_err(|e| e.to_string())?;
    info!(admin = %addr, state_dir = %config.fabric.state_dir.display(), "fabric admin listening");
    let stop = CancellationToken::new();
    tokio::spawn(crate::api::serve(
        listener,
        fabric.clone(),
        registry,
        stop.clone(),
    ));
    shutdown.cancelled().await;
    stop.cancel();
    let keep = !config.fabric.stop_instances_on_exit;
    info!(keep_instances = keep, "fabric stopping");
    fabric.shutdown(!keep, config.fabric.shutdown_grace).await;
    Ok(())
}
