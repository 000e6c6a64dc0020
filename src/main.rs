//! The `drawbridge` binary: `serve` runs the engine headless; `ctl` talks to a running one
//! over its control socket. anyhow lives only here, at the edge.

/// jemalloc, not the C library's allocator: its size classes keep the long-lived state of an
/// idle stream apart from the short-lived buffers of its set-up (TLS records, frames), so
/// what those free comes back to the system in whole pages. glibc's heap kept it as holes
/// between live objects (measured: ~10 KiB per idle pair resident for nothing).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Purged pages go back to the system at once (`MADV_DONTNEED`), not lazily (`MADV_FREE`,
/// which keeps them resident until the kernel is short of memory).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"muzzy_decay_ms:0\0"[0];

/// Hand every arena's unused pages back to the system (the engine calls it periodically).
fn purge_arenas() {
    // MALLCTL_ARENAS_ALL (4096): all arenas.
    let name = c"arena.4096.purge";
    // SAFETY: a documented mallctl with no input or output.
    unsafe {
        tikv_jemalloc_sys::mallctl(name.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
    }
}

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drawbridge::config::Settings;
use drawbridge::control::{self, ChangeReport, DomainReport, Request};
use drawbridge::engine::events::fmt_utc;
use drawbridge::engine::events::{ConnSnapshot, VerificationOutcome};
use drawbridge::engine::{Engine, ProbeReport, Status};
use drawbridge::store::DomainRecord;
use drawbridge::text::escape;

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
    /// Run the server with the live dashboard in this terminal (the default; logs go to
    /// log.file or DATA_DIR/drawbridge.log).
    Run,
    /// Run the server headless (logs to stderr or log.file).
    Serve,
    /// A living demo: the server on drawbridge.demo plus simulated peers on loopback (steady
    /// traffic, a newcomer awaiting approval, a spoofer, malformed XML, a blacklisted and an
    /// expired-certificate peer), with the dashboard. q leaves nothing behind.
    Demo,
    /// Open the dashboard of a running `serve` over its control socket.
    Attach {
        /// Control socket path (default: server.control_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Talk to a running server over its control socket.
    Ctl {
        /// Control socket path (default: server.control_socket from the config).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        cmd: CtlCommand,
    },
    /// Gateway mode ([gateway] in the config): helpers for the internal server.
    Gateway {
        #[command(subcommand)]
        cmd: GatewayCommand,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Print the lines the internal server's configuration needs for this drawbridge
    /// (prosody, ejabberd or openfire), and where the gateway CA certificate is (created if
    /// it does not exist yet).
    Setup {
        /// prosody, ejabberd or openfire
        server: String,
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
    /// Re-read TLS certificates and keys (as SIGHUP does); established streams stay.
    Reload,
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
    /// Approve a domain (it federates in every mode).
    Approve {
        domain: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Block this exact domain, both directions; its live streams close at once.
    Block {
        domain: String,
        /// Lift the block by itself after this long ("2h", "30m").
        #[arg(long = "for")]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Blacklist a domain and all its subdomains (`blacklist DOMAIN --reason TEXT`), or
    /// exchange lists (`blacklist import FILE|-`, `blacklist export`).
    #[command(args_conflicts_with_subcommands = true)]
    Blacklist {
        #[command(subcommand)]
        list: Option<BlacklistCommand>,
        domain: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Clear a block or a blacklist entry.
    Unblock {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Show or set the federation mode: open, approval or allowlist.
    Mode {
        mode: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Domains waiting for approval.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Every domain seen or decided.
    Domains {
        /// Only this state: unknown, pending, approved, blocked, blacklisted.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one domain.
    Domain {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Closed streams, newest first.
    History {
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BlacklistCommand {
    /// Import a list (one domain per line, `#` comments); `-` reads standard input.
    Import {
        file: String,
        /// Name of the list, recorded as each entry's source.
        #[arg(long)]
        source: Option<String>,
        /// Show what would change without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write the blacklist in the same format.
    Export,
}

fn main() -> ExitCode {
    // Everything drawbridge creates (database, dialback secret, keys, transcripts written
    // from the dashboard, the control socket) is for its own user only.
    // SAFETY: umask only sets the process's file-creation mask; no memory is involved.
    unsafe { libc::umask(0o077) };
    drawbridge::engine::set_memory_release(purge_arenas);
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
        None | Some(Command::Run) => rt.block_on(run(settings)),
        Some(Command::Serve) => rt.block_on(serve(settings)),
        Some(Command::Demo) => rt.block_on(demo()),
        Some(Command::Attach { socket }) => rt.block_on(attach(socket.unwrap_or(settings.control_socket))),
        Some(Command::Ctl { socket, cmd }) => rt.block_on(ctl(socket.unwrap_or(settings.control_socket), cmd)),
        Some(Command::Gateway { cmd: GatewayCommand::Setup { server } }) => gateway_setup(&settings, &server),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drawbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every event one line (see [`OneLineWriter`]): a peer's text cannot forge a log line.
fn init_logging(settings: &Settings, never_terminal: bool) -> anyhow::Result<()> {
    use drawbridge::text::OneLineWriter;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("drawbridge={}", settings.log_level)));
    let file = settings.log_file.clone().or_else(|| never_terminal.then(|| settings.data_dir.join("drawbridge.log")));
    if let Some(dir) = file.as_ref().and_then(|f| f.parent()).filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match &file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("log file {}: {e} (check log.file)", path.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(OneLineWriter(std::sync::Mutex::new(file)))
                .init();
        }
        // Colours only for a terminal: a pipe or a journal gets plain lines.
        None => {
            use std::io::IsTerminal;
            let ansi = std::io::stderr().is_terminal();
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(OneLineWriter(std::io::stderr)).init()
        }
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    init_logging(&settings, false)?;
    warn_open_secrets(&settings);
    let mut engine = Engine::start(settings).await?;
    drawbridge::control::start(&mut engine)?;
    tracing::info!(control = %engine.settings().control_socket.display(), "control socket ready");
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = engine.execute(drawbridge::engine::Request::Reload).await;
            }
        }
    }
    tracing::info!("shutting down");
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Secret files (the config when it holds component secrets, secret files, keys) that other
/// local users can read or write: one warning each, with the fix.
fn warn_open_secrets(settings: &Settings) {
    for w in drawbridge::secrets::warnings(settings) {
        tracing::warn!("{w}");
    }
}

/// `ctl` output piped into `head` and the like: end quietly when the reader goes away, as
/// Unix tools do, instead of panicking on a broken pipe. (Only for `ctl`: the server keeps
/// Rust's default of ignoring SIGPIPE, so a vanished peer is an error, not a death.)
fn default_sigpipe() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: restoring the default disposition of SIGPIPE has no other effect.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

/// Server and dashboard in one process; the dashboard quits → the server stops.
async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    init_logging(&settings, true)?;
    warn_open_secrets(&settings);
    let mut engine = Engine::start(settings).await?;
    drawbridge::control::start(&mut engine)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let dash = drawbridge::dashboard::app::run(drawbridge::dashboard::client::Client::in_process(engine.handle()), stop.clone());
    let result = with_signals(dash, stop).await;
    engine.shutdown().await;
    result.map_err(|e| anyhow::anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

async fn demo() -> anyhow::Result<ExitCode> {
    let demo = drawbridge::demo::Demo::start().await.map_err(|e| anyhow::anyhow!("demo: {e}"))?;
    let stop = tokio_util::sync::CancellationToken::new();
    let dash = drawbridge::dashboard::app::run(drawbridge::dashboard::client::Client::in_process(demo.main.handle()), stop.clone());
    let result = with_signals(dash, stop).await;
    demo.stop().await;
    result.map_err(|e| anyhow::anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

/// The dashboard against a running `serve`; quitting leaves the server running.
async fn attach(socket: PathBuf) -> anyhow::Result<ExitCode> {
    let stop = tokio_util::sync::CancellationToken::new();
    let dash = drawbridge::dashboard::app::run(drawbridge::dashboard::client::Client::socket(socket), stop.clone());
    with_signals(dash, stop).await.map_err(|e| anyhow::anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM / SIGHUP / SIGINT end the dashboard cleanly (the terminal is restored).
async fn with_signals(
    dash: impl std::future::Future<Output = Result<(), String>>,
    stop: tokio_util::sync::CancellationToken,
) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tokio::pin!(dash);
    tokio::select! {
        r = &mut dash => r,
        _ = async { tokio::select! { _ = term.recv() => {}, _ = hup.recv() => {}, _ = int.recv() => {} } } => {
            stop.cancel();
            dash.await
        }
    }
}

async fn ctl(socket: PathBuf, cmd: CtlCommand) -> anyhow::Result<ExitCode> {
    default_sigpipe();
    let (req, json) = match &cmd {
        CtlCommand::Status { json } => (Request::Status, *json),
        CtlCommand::Connections { json, closed } => (Request::Connections { closed: *closed }, *json),
        CtlCommand::Close { id } => (Request::Close { id: id.clone() }, false),
        CtlCommand::Reload => (Request::Reload, false),
        CtlCommand::Probe { domain, from, json } => (Request::Probe { domain: domain.clone(), from: from.clone() }, *json),
        CtlCommand::Verifications { domain, limit, json } => (Request::Verifications { domain: domain.clone(), limit: *limit }, *json),
        CtlCommand::Approve { domain, reason, json } => (Request::Approve { domain: domain.clone(), reason: reason.clone() }, *json),
        CtlCommand::Block { domain, duration, reason, json } => {
            let for_secs = match duration {
                Some(d) => match drawbridge::config::parse_duration(d) {
                    Ok(d) if !d.is_zero() => Some(d.as_secs().max(1)),
                    Ok(_) => anyhow::bail!("--for must be longer than zero"),
                    Err(e) => anyhow::bail!("--for: {e}"),
                },
                None => None,
            };
            (Request::Block { domain: domain.clone(), for_secs, reason: reason.clone() }, *json)
        }
        CtlCommand::Blacklist { list: Some(BlacklistCommand::Export), .. } => (Request::BlacklistExport, false),
        CtlCommand::Blacklist { list: Some(BlacklistCommand::Import { file, source, dry_run, json }), .. } => {
            let text = if file == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).map_err(|e| anyhow::anyhow!("reading standard input: {e}"))?;
                t
            } else {
                std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?
            };
            let source = source.clone().or_else(|| {
                (file != "-").then(|| std::path::Path::new(file).file_name().map(|f| f.to_string_lossy().into_owned())).flatten()
            });
            (Request::BlacklistImport { text, source, dry_run: *dry_run }, *json)
        }
        CtlCommand::Blacklist { list: None, domain, reason, json } => {
            let Some(domain) = domain else { anyhow::bail!("blacklist: give a DOMAIN (with --reason), or import / export") };
            let Some(reason) = reason else { anyhow::bail!("blacklist {domain}: --reason TEXT is required") };
            (Request::Blacklist { domain: domain.clone(), reason: reason.clone() }, *json)
        }
        CtlCommand::Unblock { domain, json } => (Request::Unblock { domain: domain.clone() }, *json),
        CtlCommand::Mode { mode: Some(m), json } => (Request::Mode { mode: m.clone() }, *json),
        CtlCommand::Mode { mode: None, json } => (Request::Status, *json),
        CtlCommand::Pending { json } => (Request::Pending, *json),
        CtlCommand::Domains { state, json } => (Request::Domains { state: state.clone() }, *json),
        CtlCommand::Domain { domain, json } => (Request::Domain { domain: domain.clone() }, *json),
        CtlCommand::History { domain, limit, json } => (Request::History { domain: domain.clone(), limit: *limit }, *json),
    };
    let resp = control::request(&socket, &req).await?;
    if !resp.ok {
        eprintln!("drawbridge: {}", escape(resp.error.as_deref().unwrap_or("request failed")));
        return Ok(ExitCode::FAILURE);
    }
    let mut data = resp.data.unwrap_or(serde_json::Value::Null);
    if json {
        println!("{}", json_for_terminal(&serde_json::to_string_pretty(&data)?));
        if let CtlCommand::Probe { .. } = cmd {
            let r: ProbeReport = serde_json::from_value(data)?;
            return Ok(if r.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Everything printed below is the engine's strings: a peer's names and words are in
    // them, and an engine (a buggy one, an old store) may not have escaped them. The list
    // export is lines of domains, escaped line by line.
    if !matches!(cmd, CtlCommand::Blacklist { list: Some(BlacklistCommand::Export), .. }) {
        escape_strings(&mut data);
    }
    match cmd {
        CtlCommand::Status { .. } => {
            let s: Status = serde_json::from_value(data)?;
            println!("drawbridge {}  up {}", s.version, human_duration(s.uptime_s * 1000));
            println!("domains:     {}", s.domains.join(", "));
            println!("listening:   {}", s.listen.join(", "));
            println!("streams:     {} in, {} out, {} established", s.streams_in, s.streams_out, s.established);
            println!("encryption:  {}", if s.require_encryption { "required" } else { "optional" });
            println!("policy:      mode {}, {} pending, {} blocked, {} blacklisted", s.mode, s.pending, s.blocked, s.blacklisted);
            if let Some(g) = &s.gateway {
                let reach = match (g.reachable, &g.last_error) {
                    (Some(true), _) => "reachable".to_owned(),
                    (Some(false), Some(e)) => format!("UNREACHABLE: {e}"),
                    (Some(false), None) => "UNREACHABLE".to_owned(),
                    (None, _) => "not contacted yet".to_owned(),
                };
                println!("gateway:     internal server {} ({reach}), auth {}", g.internal, g.auth);
                println!("             its streams arrive on {}; {} out, {} in now", g.listen.join(", "), g.streams_out, g.streams_in);
                println!("             CA it must trust: {}", g.ca_cert);
            }
            if s.overflows != Default::default() {
                println!(
                    "overflow:    {} stanzas bounced, {} results/errors dropped: links that made no room within timeouts.write",
                    s.overflows.bounced, s.overflows.dropped
                );
            }
            println!("limits:");
            for l in &s.limits {
                println!("  {:<40} {:>10} / {}", l.key, l.used, l.max);
            }
        }
        CtlCommand::Connections { .. } => {
            let v: Vec<ConnSnapshot> = serde_json::from_value(data)?;
            print_connections(&v);
        }
        CtlCommand::Close { .. } | CtlCommand::Reload => println!("{}", data.as_str().unwrap_or("ok")),
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
                print_outcome(&o);
            }
        }
        CtlCommand::Approve { .. } | CtlCommand::Block { .. } | CtlCommand::Unblock { .. } | CtlCommand::Blacklist { list: None, .. } => {
            let r: ChangeReport = serde_json::from_value(data)?;
            let rec = &r.record;
            let mut line = format!("{}: {}", rec.domain, rec.state.as_str());
            if let Some(t) = rec.expires_ms {
                line.push_str(&format!(" until {}", fmt_utc(t)));
            }
            if let Some(reason) = &rec.reason {
                line.push_str(&format!(" ({reason})"));
            }
            if !r.changed {
                line.push_str(" — unchanged");
            }
            println!("{line}");
            if !r.closed_streams.is_empty() {
                println!("closed {} live stream(s): {}", r.closed_streams.len(), r.closed_streams.join(", "));
            }
        }
        CtlCommand::Blacklist { list: Some(BlacklistCommand::Export), .. } => {
            for line in data.as_str().unwrap_or("").lines() {
                println!("{}", escape(line));
            }
        }
        CtlCommand::Blacklist { list: Some(BlacklistCommand::Import { .. }), .. } => {
            let r: drawbridge::engine::ImportReport = serde_json::from_value(data)?;
            let verb = if r.dry_run { "would add" } else { "added" };
            println!("{verb} {} domain(s) from {}{}", r.added.len(), r.source, list_suffix(&r.added));
            println!("already blacklisted: {}{}", r.already.len(), list_suffix(&r.already));
            for b in &r.invalid {
                println!("skipped line {}: {:?}: {}", b.line, b.text, b.error);
            }
            let verb = if r.dry_run { "would close" } else { "closed" };
            println!("{verb} {} live stream(s){}", r.closed_streams.len(), list_suffix(&r.closed_streams));
        }
        CtlCommand::Mode { mode: None, .. } => {
            let s: Status = serde_json::from_value(data)?;
            println!("{}", s.mode);
        }
        CtlCommand::Mode { .. } => {
            println!("mode {}", data["mode"].as_str().unwrap_or("?"));
            if let Some(c) = data["closed_streams"].as_array().filter(|c| !c.is_empty()) {
                println!("closed {} live stream(s)", c.len());
            }
        }
        CtlCommand::Pending { .. } | CtlCommand::Domains { .. } => {
            let v: Vec<DomainRecord> = serde_json::from_value(data)?;
            print_domains(&v);
        }
        CtlCommand::Domain { .. } => {
            let r: DomainReport = serde_json::from_value(data)?;
            println!("{}: {}", r.domain, r.verdict);
            match &r.record {
                None => println!("never seen or decided"),
                Some(rec) => {
                    println!(
                        "state:        {}{}",
                        rec.state.as_str(),
                        rec.expires_ms.map(|t| format!(" until {}", fmt_utc(t))).unwrap_or_default()
                    );
                    if let Some(reason) = &rec.reason {
                        println!("reason:       {reason}");
                    }
                    if let (Some(who), Some(when)) = (&rec.who, rec.when_ms) {
                        println!("decided:      by {who} at {}", fmt_utc(when));
                    }
                    if let Some(src) = &rec.source {
                        println!("source:       {src}");
                    }
                    if let (Some(f), Some(l)) = (rec.first_seen_ms, rec.last_seen_ms) {
                        println!("seen:         first {}, last {}", fmt_utc(f), fmt_utc(l));
                    }
                    println!(
                        "streams:      {} in, {} out; stanzas {} in, {} out",
                        rec.streams_in, rec.streams_out, rec.stanzas_in, rec.stanzas_out
                    );
                    if let Some(v) = &rec.last_verification {
                        println!("verification: {v}");
                    }
                }
            }
            if !r.outcomes.is_empty() {
                println!("\nrecent verifications:");
                for o in &r.outcomes {
                    print_outcome(o);
                }
            }
            if !r.streams.is_empty() {
                println!("\nrecent streams:");
                print_connections(&r.streams);
            }
            if !r.policy_log.is_empty() {
                println!("\npolicy log:");
                for a in &r.policy_log {
                    println!(
                        "{} {} by {}{}",
                        fmt_utc(a.time_ms),
                        a.action,
                        a.who,
                        a.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                    );
                }
            }
        }
        CtlCommand::History { .. } => {
            let v: Vec<ConnSnapshot> = serde_json::from_value(data)?;
            print_connections(&v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every string in `v` with its control characters, bidi overrides and invisible marks
/// shown as escapes (`\n`, `\x1b`, `\u{202e}`): what `ctl` prints cannot drive the
/// operator's terminal or forge a line of output.
fn escape_strings(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let std::borrow::Cow::Owned(e) = escape(s) {
                *s = e;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(escape_strings),
        serde_json::Value::Object(o) => o.values_mut().for_each(escape_strings),
        _ => {}
    }
}

/// `ctl … --json` for a terminal: serde_json escapes C0 controls in strings, not DEL, C1
/// controls or bidi marks; those are written as `\uXXXX` too (the same JSON value; outside
/// strings the text is ASCII structure and line feeds).
fn json_for_terminal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c != '\n' && drawbridge::text::is_unsafe(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn list_suffix(v: &[String]) -> String {
    if v.is_empty() {
        String::new()
    } else if v.len() <= 10 {
        format!(": {}", v.join(", "))
    } else {
        format!(": {}, … ({} more)", v[..10].join(", "), v.len() - 10)
    }
}

/// One outcome; the arrow points the way the stream went (remote → local inbound).
fn print_outcome(o: &VerificationOutcome) {
    let (from, to) = match o.direction {
        drawbridge::engine::events::Direction::In => (&o.remote, &o.local),
        drawbridge::engine::events::Direction::Out => (&o.local, &o.remote),
    };
    println!(
        "{} {:>3} {:<8} {from} → {to}  {}: {}",
        fmt_utc(o.time_ms),
        fmt_dir(o.direction),
        o.result.as_str(),
        o.method.as_str(),
        o.reason
    );
}

fn print_domains(v: &[DomainRecord]) {
    if v.is_empty() {
        println!("no domains");
        return;
    }
    println!("{:<32} {:<12} {:<20} {:>5} {:>5}  WHY", "DOMAIN", "STATE", "LAST SEEN", "IN", "OUT");
    for r in v {
        let why = match (&r.reason, &r.who) {
            (Some(reason), Some(who)) => format!("{reason} (by {who})"),
            (Some(reason), None) => reason.clone(),
            (None, Some(who)) => format!("by {who}"),
            (None, None) => r.last_verification.clone().unwrap_or_default(),
        };
        let state = match r.expires_ms {
            Some(t) => format!("{} ({})", r.state.as_str(), human_duration(t.saturating_sub(drawbridge::engine::events::now_ms()))),
            None => r.state.as_str().to_owned(),
        };
        println!(
            "{:<32} {:<12} {:<20} {:>5} {:>5}  {}",
            r.domain,
            state,
            r.last_seen_ms.map(|t| fmt_utc(t)[..19].to_owned()).unwrap_or_else(|| "-".into()),
            r.streams_in,
            r.streams_out,
            why
        );
    }
}

fn fmt_dir(d: drawbridge::engine::events::Direction) -> &'static str {
    match d {
        drawbridge::engine::events::Direction::In => "in",
        drawbridge::engine::events::Direction::Out => "out",
    }
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

/// `drawbridge gateway setup SERVER`.
fn gateway_setup(settings: &Settings, server: &str) -> anyhow::Result<ExitCode> {
    use drawbridge::gateway::setup::{InternalServer, setup};
    let Some(kind) = InternalServer::parse(server) else {
        anyhow::bail!("{server:?} is not one of prosody, ejabberd, openfire");
    };
    let Some(g) = &settings.gateway else {
        let file = settings.source.as_ref().map_or("the built-in default".to_owned(), |p| p.display().to_string());
        anyhow::bail!("{file} has no [gateway] section (see config.example.toml); pass the gateway's config with --config");
    };
    // The CA the internal server must trust: the operator's, or drawbridge's own (created now
    // if it does not exist, so the file can be handed over before the first start).
    let ca = drawbridge::gateway::GatewayCa::open(g.ca_cert.as_deref(), g.ca_key.as_deref(), &settings.data_dir)?;
    let path = std::fs::canonicalize(ca.cert_path()).unwrap_or_else(|_| ca.cert_path().to_owned());
    print!("{}", setup(kind, g, &settings.domains, &path)?);
    Ok(ExitCode::SUCCESS)
}

fn print_connections(v: &[ConnSnapshot]) {
    if v.is_empty() {
        println!("no streams");
        return;
    }
    let now = drawbridge::engine::events::now_ms();
    println!(
        "{:<32} {:<3} {:<24} {:<24} {:<14} {:<21} {:<8} {:>6} {:>6} {:>7}",
        "ID", "DIR", "LOCAL", "REMOTE", "STATE", "PEER", "TLS", "IN", "OUT", "AGE"
    );
    for c in v {
        let remote = if c.pairs.is_empty() {
            c.remote.clone().unwrap_or_default()
        } else {
            c.pairs
                .iter()
                .map(|p| format!("{}{}", p.remote, if p.status == drawbridge::engine::events::PairStatus::Valid { "" } else { "?" }))
                .collect::<Vec<_>>()
                .join(",")
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
        match c.kind {
            drawbridge::types::StreamKind::Internal => {
                println!("{:<32}     internal link (gateway): with the internal server, as {}", "", c.local.as_deref().unwrap_or("-"))
            }
            drawbridge::types::StreamKind::Component => println!("{:<32}     external component (XEP-0114)", ""),
            drawbridge::types::StreamKind::Federation => {}
        }
        if !c.pairs.is_empty() {
            let auth: Vec<String> = c.pairs.iter().map(|p| format!("{} by {}", p.remote, p.method.as_str())).collect();
            println!("{:<32}     authenticated: {}", "", auth.join(", "));
        }
        if let Some(v) = c.tls.as_ref().and_then(|t| t.cert_verdict.as_ref()) {
            println!("{:<32}     certificate: {v}", "");
        }
        if let Some(r) = &c.close_reason {
            println!("{:<32}     closed: {r}", "");
        }
    }
}
