//! The `drawbridge` binary: `serve` runs the engine headless; `ctl` talks to a running one
//! over its control socket. anyhow lives only here, at the edge.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drawbridge::config::Settings;
use drawbridge::control::{self, Request};
use drawbridge::engine::events::{ConnSnapshot, VerificationOutcome};
use drawbridge::engine::{Engine, ProbeReport, Status};

#[derive(Parser)]
#[command(name = "drawbridge", version, about = "XMPP server-to-server federation server")]
struct Cli {
    /// Config file (TOML). Without it, the built-in default: domain localhost on
    /// 127.0.0.1:5269, data in ./drawbridge-data.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server headless (logs to stderr or log.file).
    Serve,
    /// Talk to a running server over its control socket.
    Ctl {
        /// Control socket path (default: server.control_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        cmd: CtlCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Hosted domains, listeners, stream counts, uptime.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Every live stream (and recently closed ones with --closed).
    Connections {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        closed: bool,
    },
    /// Close a stream by id.
    Close { id: String },
    /// XEP-0199 ping over federation: round trip, stream used, how it was authenticated.
    Probe {
        domain: String,
        /// Hosted domain to ping from (default: the first of server.domains).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Recent verification outcomes, newest first.
    Verifications {
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match &cli.config {
        Some(p) => match Settings::load(p) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("drawbridge: {e}");
                return ExitCode::from(2);
            }
        },
        None => Settings::builtin(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drawbridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None | Some(Command::Serve) => rt.block_on(serve(settings)),
        Some(Command::Ctl { socket, cmd }) => rt.block_on(ctl(socket.unwrap_or(settings.control_socket), cmd)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drawbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("drawbridge={}", settings.log_level)));
    match &settings.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("log file {}: {e} (check log.file)", path.display()))?;
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(std::sync::Mutex::new(file)).init();
        }
        None => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    init_logging(&settings)?;
    let mut engine = Engine::start(settings).await?;
    engine.serve_control()?;
    tracing::info!(control = %engine.shared.settings.control_socket.display(), "control socket ready");
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => tracing::info!("SIGHUP: nothing to reload in this version"),
        }
    }
    tracing::info!("shutting down");
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn ctl(socket: PathBuf, cmd: CtlCommand) -> anyhow::Result<ExitCode> {
    let (req, json) = match &cmd {
        CtlCommand::Status { json } => (Request::Status, *json),
        CtlCommand::Connections { json, closed } => (Request::Connections { closed: *closed }, *json),
        CtlCommand::Close { id } => (Request::Close { id: id.clone() }, false),
        CtlCommand::Probe { domain, from, json } => (Request::Probe { domain: domain.clone(), from: from.clone() }, *json),
        CtlCommand::Verifications { domain, limit, json } => (Request::Verifications { domain: domain.clone(), limit: *limit }, *json),
    };
    let resp = control::request(&socket, &req).await?;
    if !resp.ok {
        eprintln!("drawbridge: {}", resp.error.unwrap_or_else(|| "request failed".into()));
        return Ok(ExitCode::FAILURE);
    }
    let data = resp.data.unwrap_or(serde_json::Value::Null);
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        if let CtlCommand::Probe { .. } = cmd {
            let r: ProbeReport = serde_json::from_value(data)?;
            return Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        return Ok(ExitCode::SUCCESS);
    }
    match cmd {
        CtlCommand::Status { .. } => {
            let s: Status = serde_json::from_value(data)?;
            println!("drawbridge {}  up {}", s.version, human_duration(s.uptime_s * 1000));
            println!("domains:     {}", s.domains.join(", "));
            println!("listening:   {}", s.listen.join(", "));
            println!("streams:     {} in, {} out, {} established", s.streams_in, s.streams_out, s.established);
            println!("encryption:  {}", if s.require_encryption { "required" } else { "optional" });
        }
        CtlCommand::Connections { .. } => {
            let v: Vec<ConnSnapshot> = serde_json::from_value(data)?;
            print_connections(&v);
        }
        CtlCommand::Close { .. } => println!("{}", data.as_str().unwrap_or("ok")),
        CtlCommand::Probe { .. } => {
            let r: ProbeReport = serde_json::from_value(data)?;
            if r.ok {
                println!("pong from {} to {} in {:.1} ms", r.to, r.from, r.rtt_ms.unwrap_or(0.0));
            } else {
                println!("probe {} → {} FAILED: {}", r.from, r.to, r.error.as_deref().unwrap_or("unknown error"));
            }
            if let Some(s) = &r.stream {
                println!("stream:  {s}{}", r.peer_addr.as_deref().map(|a| format!(" to {a}")).unwrap_or_default());
            }
            if let Some(t) = &r.tls {
                println!("tls:     {t}");
            }
            if let Some(a) = &r.auth {
                println!("auth:    {a}");
            }
            return Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        CtlCommand::Verifications { .. } => {
            let v: Vec<VerificationOutcome> = serde_json::from_value(data)?;
            if v.is_empty() {
                println!("no verification outcomes yet");
            }
            for o in v {
                println!("{} {:>3} {:<8} {} → {}  {:?}: {}", fmt_time(o.time_ms), fmt_dir(o.direction), format!("{:?}", o.result).to_lowercase(), o.remote, o.local, o.method, o.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn fmt_dir(d: drawbridge::engine::events::Direction) -> &'static str {
    match d {
        drawbridge::engine::events::Direction::In => "in",
        drawbridge::engine::events::Direction::Out => "out",
    }
}

fn fmt_time(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s / 60) % 60)
    }
}

fn print_connections(v: &[ConnSnapshot]) {
    if v.is_empty() {
        println!("no streams");
        return;
    }
    let now = drawbridge::engine::events::now_ms();
    println!("{:<32} {:<3} {:<24} {:<24} {:<14} {:<21} {:<8} {:>6} {:>6} {:>7}", "ID", "DIR", "LOCAL", "REMOTE", "STATE", "PEER", "TLS", "IN", "OUT", "AGE");
    for c in v {
        let remote = if c.pairs.is_empty() {
            c.remote.clone().unwrap_or_default()
        } else {
            c.pairs.iter().map(|p| format!("{}{}", p.remote, if p.status == drawbridge::engine::events::PairStatus::Valid { "" } else { "?" })).collect::<Vec<_>>().join(",")
        };
        println!(
            "{:<32} {:<3} {:<24} {:<24} {:<14} {:<21} {:<8} {:>6} {:>6} {:>7}",
            c.id,
            fmt_dir(c.direction),
            c.local.as_deref().unwrap_or("-"),
            remote,
            c.state.as_str(),
            c.peer_addr.as_deref().unwrap_or("-"),
            c.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
            c.stanzas_in,
            c.stanzas_out,
            human_duration(now.saturating_sub(c.opened_ms)),
        );
        if let Some(r) = &c.close_reason {
            println!("{:<32}     closed: {r}", "");
        }
    }
}
