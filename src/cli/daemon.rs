//! `ctmask daemon` and `ctmask status`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::daemon::worker::{MakeScreener, Screener};
use crate::daemon::{Reloaded, Shutdown};
use crate::screening::ModelScreener;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Config file (default: config/ctmask.yaml, then /etc/ctmask/ctmask.yaml).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The screener factory the daemon runs on its worker thread.
pub fn make_screener(cfg: &Config) -> MakeScreener {
    let models = cfg.models.clone();
    let settings = cfg.screening.clone();
    let device = cfg.daemon.device;
    let threads = cfg.threads.map(|t| t.0);
    Box::new(move || {
        let device = device.resolve().map_err(|e| e.to_string())?;
        crate::device::set_threads(threads);
        let s = ModelScreener::new(&models, device, settings).map_err(|e| e.to_string())?;
        tracing::info!(device = %crate::device::device_name(device), "models loaded");
        Ok(Box::new(s) as Box<dyn Screener>)
    })
}

/// What the daemon takes from a reloaded config: the blocks `daemon::run` took at start-up
/// (`daemon:`, `slice:`), and the keys outside them that changed since the daemon started and
/// need a restart (the screener is built once, with the models, the screening settings and the
/// thread count).
pub fn reloaded(first: &Config, new: Config) -> Reloaded {
    let restart_keys = [
        ("models", first.models != new.models),
        ("screening", first.screening != new.screening),
        ("threads", first.threads != new.threads),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_string())
    .collect();
    Reloaded {
        daemon: new.daemon,
        slice: new.slice,
        restart_keys,
    }
}

pub fn load_config(path: Option<&Path>) -> anyhow::Result<(PathBuf, Config)> {
    let path = path.map(Path::to_path_buf).unwrap_or_else(Config::default_path);
    let cfg = Config::load(&path)?;
    Ok((path, cfg))
}

pub fn run_daemon(a: &DaemonArgs) -> anyhow::Result<()> {
    let (path, cfg) = load_config(a.config.as_deref())?;
    tracing::info!(config = %path.display(), "starting; {}", crate::DISCLAIMER);
    let shutdown = Shutdown::new();
    shutdown.install_os_handlers()?;
    let reload_path = path.clone();
    let first = cfg.clone();
    shutdown.set_reloader(Box::new(move || {
        // the same path as start-up: parse, check, resolve relative model paths
        let (_, c) = load_config(Some(&reload_path)).map_err(|e| e.to_string())?;
        Ok(reloaded(&first, c))
    }));
    let screener = make_screener(&cfg);
    crate::daemon::run(cfg.daemon, cfg.slice, screener, shutdown)?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Config file naming the socket (default: config/ctmask.yaml, then /etc/ctmask/ctmask.yaml).
    #[arg(long, conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The daemon's socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print the snapshot as JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Send failed DICOM forwards again: every one, or the outbox entry ID.
    #[arg(long, value_name = "ID", num_args = 0..=1, default_missing_value = "all")]
    pub retry_forward: Option<String>,
}

/// The socket a command should talk to.
pub fn socket_path(socket: Option<&Path>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    match socket {
        Some(s) => Ok(s.to_path_buf()),
        None => Ok(load_config(config)?.1.daemon.socket),
    }
}

pub fn run_status(a: &StatusArgs) -> anyhow::Result<()> {
    let socket = socket_path(a.socket.as_deref(), a.config.as_deref())?;
    if let Some(which) = &a.retry_forward {
        let id = match which.as_str() {
            "all" => None,
            n => Some(
                n.parse::<i64>()
                    .map_err(|_| anyhow::anyhow!("--retry-forward: `{n}` is not an outbox entry id"))?,
            ),
        };
        let mut client = crate::protocol::Client::connect(&socket, Some(std::time::Duration::from_secs(10)))
            .map_err(|e| anyhow::anyhow!("{}: cannot reach the daemon: {e}", socket.display()))?;
        match client.request(&crate::protocol::Request::RetryForward { id })? {
            crate::protocol::Message::Ack { message, .. } => println!("{message}"),
            crate::protocol::Message::Error { message, .. } => anyhow::bail!("{message}"),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
        return Ok(());
    }
    let s = crate::protocol::fetch_snapshot(&socket)
        .map_err(|e| anyhow::anyhow!("{}: cannot reach the daemon: {e}", socket.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "ctmask daemon {} (pid {}), up {:.0} s, device {}",
        s.daemon_version, s.pid, s.uptime_s, s.device
    );
    if let Some(banner) = crate::protocol::demo_banner(&s.models) {
        println!("*** {} ***", banner.to_uppercase());
    }
    for m in &s.models {
        let trained = m
            .training_data
            .as_deref()
            .map(|t| format!(" (trained on {t})"))
            .unwrap_or_default();
        println!(
            "  model {} {}{trained}",
            m.name,
            &m.sha256[..m.sha256.len().min(12)]
        );
    }
    println!(
        "intake {}{}",
        if s.intake.paused { "paused" } else { "running" },
        if s.intake.reasons.is_empty() {
            String::new()
        } else {
            format!(": {}", s.intake.reasons.join("; "))
        }
    );
    let c = &s.counts;
    println!(
        "jobs: {} pending, {} running, {} done, {} failed, {} quarantined",
        c.pending, c.running, c.done, c.failed, c.quarantined
    );
    if let Some(o) = &s.outbox {
        println!(
            "DICOM forwarding: {} pending, {} sent, {} failed{}",
            o.pending,
            o.sent,
            o.failed,
            if o.failed > 0 {
                " (ctmask status --retry-forward)"
            } else {
                ""
            }
        );
        for i in o
            .items
            .iter()
            .filter(|i| i.state == crate::dicom::forward::OutboxState::Failed.as_str() || i.attempts > 0)
            .take(10)
        {
            println!(
                "  #{} {} of series {} to {}: {} after {} tries{}",
                i.id,
                i.kind,
                i.series,
                i.destination,
                i.state,
                i.attempts,
                i.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
    }
    println!("{}", crate::DISCLAIMER);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// Config file naming the socket (default: config/ctmask.yaml, then /etc/ctmask/ctmask.yaml).
    #[arg(long, conflicts_with = "socket")]
    pub config: Option<PathBuf>,
    /// The daemon's socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub action: ControlAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum ControlAction {
    /// Stop taking new jobs (files keep being queued).
    Pause,
    /// Take jobs again (also after a run of screening failures paused intake).
    Resume,
    /// Queue one failed or quarantined job again.
    Retry { job_id: i64 },
    /// Queue every failed and quarantined job again and resume after screening failures.
    RetryAll,
}

/// `ctmask control`: one control request; the daemon's answer is printed.
pub fn run_control(a: &ControlArgs) -> anyhow::Result<()> {
    use crate::protocol::{Message, Request};
    let socket = socket_path(a.socket.as_deref(), a.config.as_deref())?;
    let request = match a.action {
        ControlAction::Pause => Request::Pause,
        ControlAction::Resume => Request::Resume,
        ControlAction::Retry { job_id } => Request::Retry { job_id },
        ControlAction::RetryAll => Request::RetryAll,
    };
    let mut client = crate::protocol::Client::connect(&socket, Some(std::time::Duration::from_secs(10)))
        .map_err(|e| anyhow::anyhow!("{}: cannot reach the daemon: {e}", socket.display()))?;
    match client.request(&request) {
        Ok(Message::Ack { message, .. }) => {
            println!("{message}");
            Ok(())
        }
        Ok(other) => anyhow::bail!("unexpected answer: {other:?}"),
        Err(e) => anyhow::bail!("{e}"),
    }
}
