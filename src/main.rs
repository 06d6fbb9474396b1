//! `rota`: run a config, check one, or (with no arguments) run the loopback demo.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rota::demo::{Demo, DEMO_LISTEN};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// A layer-4 TCP load balancer with health probing.
///
/// With no arguments, runs a demo on loopback: a balancer on 127.0.0.1:8080 in
/// front of three built-in web instances, admin API on 127.0.0.1:9090.
#[derive(Parser)]
#[command(name = "rota", version)]
struct Cli {
    /// Run the balancer described by this TOML file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file; exits non-zero and names every error.
    Check { file: PathBuf },
    /// Run the demo (the default when no arguments are given).
    Demo {
        #[arg(long, default_value = DEMO_LISTEN)]
        listen: SocketAddr,
        #[arg(long, default_value = rota_config::DEFAULT_ADMIN_LISTEN)]
        admin: SocketAddr,
    },
    /// Run one built-in web instance (answers with its name; `/health` → 200).
    DemoBackend {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "web-0")]
        name: String,
    },
    /// Run a guest agent: supervise one instance's role process and serve its status.
    Agent(Box<rota_fabric::agent::AgentArgs>),
    /// Fabric stub: run one (`rota fabric run`) or operate it (status, scale, reboot, update, ...).
    Fabric(rota_fabric::cli::FabricArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    if let Some(Command::Check { file }) = &cli.command {
        return check(file);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("rota-control")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rota: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rota: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn check(file: &std::path::Path) -> ExitCode {
    match rota_config::load(file) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} endpoints, {} pools)",
                file.display(),
                loaded.config.endpoints.len(),
                loaded.config.pools.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let shutdown = signals();
    match (cli.config, cli.command) {
        (Some(path), None) => {
            let loaded = rota_config::load(&path)?;
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            rota::run(loaded.config, Some(path), reload_signals(), shutdown).await
        }
        (None, None) => {
            demo(
                DEMO_LISTEN.parse()?,
                rota_config::DEFAULT_ADMIN_LISTEN.parse()?,
                shutdown,
            )
            .await
        }
        (None, Some(Command::Demo { listen, admin })) => demo(listen, admin, shutdown).await,
        (None, Some(Command::DemoBackend { listen, name })) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            // The first stdout line tells a parent (the demo) where the instance is.
            println!("{name} listening on {}", listener.local_addr()?);
            rota_fabric::web::serve(listener, name, shutdown).await;
            Ok(())
        }
        (None, Some(Command::Agent(args))) => Ok(rota_fabric::agent::run(*args, shutdown).await?),
        (None, Some(Command::Fabric(args))) => rota_fabric::cli::run(args, shutdown)
            .await
            .map_err(anyhow::Error::msg),
        (Some(_), Some(_)) => {
            anyhow::bail!("--config runs a config; it does not combine with a subcommand")
        }
        (None, Some(Command::Check { .. })) => unreachable!("handled before the runtime starts"),
    }
}

async fn demo(
    listen: SocketAddr,
    admin: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let demo = Demo::start(listen, admin).await?;
    print!("{}", demo.banner());
    shutdown.cancelled().await;
    demo.shutdown(rota_config::DEFAULT_SHUTDOWN_GRACE).await;
    Ok(())
}

/// The first SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.
fn signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("signal received: draining (send another to exit at once)");
        t.cancel();
        wait_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

/// A message for each SIGHUP: reload the config file.
fn reload_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}

#[cfg(unix)]
async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, Ctrl-C still ends the process the default way.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
