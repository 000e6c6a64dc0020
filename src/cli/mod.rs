//! The command line (clap): `run`, `serve`, `demo`, `attach`, `ctl …`, `gateway setup`,
//! `store migrate`, and `man` / `completions`, which are generated from these very types so they cannot drift.
//! The `ctl` client and its human printers are here too, as library code with tests; the
//! binary only parses, starts and maps results to exit codes.

pub mod ctl;
pub mod man;
pub mod print;
pub mod store;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum, ValueHint};

use crate::config::Settings;

#[derive(Parser)]
#[command(name = "drawbridge", version, about = "XMPP server-to-server federation server", subcommand_value_name = "COMMAND")]
pub struct Cli {
    /// Config file (TOML). Without it, the built-in default: domain localhost on
    /// 127.0.0.1:5269, data in ./drawbridge-data.
    #[arg(long, short, global = true, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        socket: Option<PathBuf>,
    },
    /// Talk to a running server over its control socket.
    #[command(subcommand_value_name = "COMMAND")]
    Ctl {
        /// Control socket path (default: server.control_socket from the config).
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        cmd: CtlCommand,
    },
    /// Gateway mode ([gateway] in the config): helpers for the internal server.
    #[command(subcommand_value_name = "COMMAND")]
    Gateway {
        #[command(subcommand)]
        cmd: GatewayCommand,
    },
    /// The store: move a node's embedded store (DATA_DIR/db) to PostgreSQL.
    #[command(subcommand_value_name = "COMMAND")]
    Store {
        #[command(subcommand)]
        cmd: StoreCommand,
    },
    /// Print the manual page, drawbridge(1), as roff: every command, examples, files
    /// (`drawbridge man | man -l -`).
    Man,
    /// Print a completion script for bash, zsh or fish (the Debian package installs them).
    Completions {
        /// The shell to complete in.
        shell: Shell,
    },
}

/// The shells `completions` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The command line as clap sees it, built (subcommands know their full names): what `man`
/// and `completions` are generated from.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// `drawbridge completions SHELL`: the script, from the same clap definition the binary parses.
pub fn completions(shell: Shell) -> Vec<u8> {
    use clap_complete::aot::{Bash, Fish, Zsh, generate};
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    match shell {
        Shell::Bash => generate(Bash, &mut cmd, "drawbridge", &mut out),
        Shell::Zsh => generate(Zsh, &mut cmd, "drawbridge", &mut out),
        Shell::Fish => generate(Fish, &mut cmd, "drawbridge", &mut out),
    }
    out
}

#[derive(Subcommand)]
pub enum GatewayCommand {
    /// Print the lines the internal server's configuration needs for this drawbridge
    /// (prosody, ejabberd or openfire), and where the gateway CA certificate is (created if
    /// it does not exist yet).
    Setup {
        /// prosody, ejabberd or openfire
        server: String,
    },
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy this node's embedded store into an empty PostgreSQL database, to run the node on
    /// it ([store] backend = "postgres"): the dialback and familiarity secrets (keys in
    /// flight stay valid), the gateway CA drawbridge made itself, the mode, every domain's decision and counters, the policy log,
    /// verification outcomes, stream history (streams left open are closed), blocklist
    /// entries and feed statuses, and the familiarity set; the rows carry the node's name.
    /// One transaction: all or nothing. The embedded store is left as it is (a copy).
    ///
    /// Stop drawbridge first (a data dir in use is refused), and run this as the user the
    /// data dir belongs to (the store writes files of its own when opened). A database that
    /// already holds data (or this copy, from an earlier run) is refused, nothing changed.
    /// The command prints what it copied and the lines the config needs.
    Migrate {
        /// The database: a libpq conninfo ("host=/run/postgresql dbname=drawbridge
        /// user=drawbridge") or a postgresql:// URL.
        #[arg(long = "to-postgres", value_name = "CONNINFO")]
        to_postgres: String,
        /// The node name the copied rows carry (default: [cluster] node of the config, else
        /// the host name); the node must run under this name afterwards.
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Hosted domains, listeners, stream counts, uptime.
    Status {
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Every live stream (and recently closed ones with --closed); every node's with --cluster.
    Connections {
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
        /// Recently closed streams too, with why they closed.
        #[arg(long)]
        closed: bool,
        /// Every node's streams on a shared store (store.backend = "postgres"), with a NODE
        /// column: the other nodes' as they last published them (every cluster.heartbeat).
        #[arg(long)]
        cluster: bool,
    },
    /// Close a stream by id.
    Close {
        /// The stream's id, as `ctl connections` shows it.
        id: String,
    },
    /// Re-read TLS certificates and keys (as SIGHUP does); established streams stay.
    Reload,
    /// XEP-0199 ping over federation: round trip, stream used, how it was authenticated.
    Probe {
        /// The remote domain to ping.
        domain: String,
        /// Hosted domain to ping from (default: the first of server.domains).
        #[arg(long)]
        from: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Recent verification outcomes, newest first.
    Verifications {
        /// Only this remote domain's.
        #[arg(long)]
        domain: Option<String>,
        /// At most this many (default 50).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Approve a domain (it federates in every mode).
    Approve {
        /// The domain to approve.
        domain: String,
        /// Why: kept in the policy log and shown with the domain.
        #[arg(long)]
        reason: Option<String>,
        /// Change nothing: show the live streams it would close and the domains seen in the
        /// recorded history that it would refuse, hold or allow.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: how many days of recorded history to judge (default 30).
        #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Block this exact domain, both directions; its live streams close at once.
    Block {
        /// The domain to block (not its subdomains: see blacklist).
        domain: String,
        /// Lift the block by itself after this long ("2h", "30m").
        #[arg(long = "for")]
        duration: Option<String>,
        /// Why: kept in the policy log and shown with the domain.
        #[arg(long)]
        reason: Option<String>,
        /// Change nothing: show the live streams it would close and the domains seen in the
        /// recorded history that it would refuse, hold or allow.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: how many days of recorded history to judge (default 30).
        #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Blacklist a domain and all its subdomains (`blacklist DOMAIN --reason TEXT`), or
    /// exchange lists (`blacklist import FILE|-`, `blacklist export`).
    #[command(args_conflicts_with_subcommands = true, subcommand_value_name = "COMMAND")]
    Blacklist {
        #[command(subcommand)]
        list: Option<BlacklistCommand>,
        /// The domain to blacklist, with all its subdomains.
        domain: Option<String>,
        /// Why: kept in the policy log and shown with the domain.
        #[arg(long)]
        reason: Option<String>,
        /// Change nothing: show the live streams it would close and the domains seen in the
        /// recorded history that it would refuse, hold or allow.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: how many days of recorded history to judge (default 30).
        #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Clear a block or a blacklist entry.
    Unblock {
        /// The domain to clear.
        domain: String,
        /// Change nothing: show the live streams it would close and the domains seen in the
        /// recorded history that it would refuse, hold or allow.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: how many days of recorded history to judge (default 30).
        #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show or set the federation mode: open, approval or allowlist.
    Mode {
        /// open, approval or allowlist; without it, the mode now.
        mode: Option<String>,
        /// Change nothing: show the live streams it would close and the domains seen in the
        /// recorded history that it would refuse, hold or allow.
        #[arg(long, requires = "mode")]
        dry_run: bool,
        /// With --dry-run: how many days of recorded history to judge (default 30).
        #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Domains waiting for approval.
    Pending {
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Every domain seen or decided.
    Domains {
        /// Only this state: unknown, pending, approved, blocked, blacklisted.
        #[arg(long)]
        state: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Everything known about one domain.
    Domain {
        /// The domain to show.
        domain: String,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Why a domain is treated as it is: what would happen now to a stream from and to it,
    /// rule by rule, and the rule that decides.
    Explain {
        /// The domain to explain.
        domain: String,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The metrics in the OpenMetrics text format, as `GET /metrics` serves them
    /// ([metrics] listen), without HTTP.
    Metrics,
    /// The real-time blocklists followed ([[rtbl]]): each feed's state and counters, and its
    /// entries with their reports (retracted ones marked).
    Rtbl {
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Keep a listed domain's block as the operator's own decision: it stays blocked after
    /// the listing is retracted, the listing named as its provenance.
    Keep {
        /// The listed domain to keep blocked.
        domain: String,
        /// Why, added to the listing's reason.
        #[arg(long)]
        reason: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// The certificate each remote domain last authenticated by, soonest expiry first:
    /// not-after, time left, issuer, when and how; and ours.
    Certs {
        /// Only domains whose certificate expires within this ("30d", "2w") or has expired.
        #[arg(long, value_name = "DURATION")]
        expiring: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Closed streams, newest first.
    History {
        /// Only this remote domain's.
        #[arg(long)]
        domain: Option<String>,
        /// At most this many (default 50).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum BlacklistCommand {
    /// Import a list (one domain per line, `#` comments); `-` reads standard input.
    Import {
        /// The list to read; `-` for standard input.
        #[arg(value_hint = ValueHint::FilePath)]
        file: String,
        /// Name of the list, recorded as each entry's source.
        #[arg(long)]
        source: Option<String>,
        /// Change nothing: show what would be added, the live streams it would close and the
        /// domains seen in the recorded history that it would refuse (subdomains included).
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: how many days of recorded history to judge (default 30).
        #[arg(long, value_name = "N", requires = "dry_run", value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: Option<u32>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Write the blacklist in the same format.
    Export,
}

/// The log file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("log file {}: {err} (check log.file)", path.display())]
pub struct LogFileError {
    pub path: PathBuf,
    pub err: std::io::Error,
}

/// Every event one line (see [`OneLineWriter`](crate::text::OneLineWriter)): a peer's text
/// cannot forge a log line. Colours only for text lines to a terminal (see [`log_colours`]).
pub fn init_logging(settings: &Settings, never_terminal: bool) -> Result<(), LogFileError> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("drawbridge={}", settings.log_level)));
    let file = settings.log_file.clone().or_else(|| never_terminal.then(|| settings.data_dir.join("drawbridge.log")));
    if let Some(dir) = file.as_ref().and_then(|f| f.parent()).filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let format = settings.log_format;
    let subscriber = match &file {
        Some(path) => {
            let file =
                std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|err| LogFileError { path: path.clone(), err })?;
            log_subscriber(format, filter, false, std::sync::Mutex::new(file))
        }
        None => {
            let colours = log_colours(format, std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
            log_subscriber(format, filter, colours, std::io::stderr)
        }
    };
    // Also takes the `log` crate's records (rustls); fails only if a subscriber is already
    // set (a second call in one process).
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = subscriber.try_init();
    Ok(())
}

/// Whether log lines get colours: text lines to a terminal (`terminal`: the destination
/// itself is one — stderr checked with `IsTerminal`; a `log.file` never is), unless
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>). A file, a pipe, the
/// journal and JSON lines never get escape codes.
pub fn log_colours(format: crate::config::LogFormat, terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    format == crate::config::LogFormat::Text && terminal && crate::text::colour_allowed(no_color)
}

/// The subscriber for `format`, each event one line through `make` (wrapped in a
/// [`OneLineWriter`](crate::text::OneLineWriter)); `colours` for text lines only.
pub fn log_subscriber<M>(
    format: crate::config::LogFormat,
    filter: tracing_subscriber::EnvFilter,
    colours: bool,
    make: M,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    M: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    use crate::config::LogFormat;
    use crate::text::{LineSyntax, OneLineWriter};
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => Box::new(fmt.with_ansi(colours).with_writer(OneLineWriter::new(make, LineSyntax::Text { colours })).finish()),
        LogFormat::Json => Box::new(fmt.json().with_ansi(false).with_writer(OneLineWriter::new(make, LineSyntax::Json)).finish()),
    }
}

/// Why `gateway setup` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum GatewaySetupError {
    #[error("{0:?} is not one of prosody, ejabberd, openfire")]
    UnknownServer(String),
    #[error("{0} has no [gateway] section (see config.example.toml); pass the gateway's config with --config")]
    NoGateway(String),
    #[error(transparent)]
    Ca(#[from] crate::gateway::ca::CaError),
    #[error(transparent)]
    Setup(#[from] crate::gateway::setup::SetupError),
}

/// `drawbridge gateway setup SERVER`: the lines the internal server's configuration needs.
pub fn gateway_setup(settings: &Settings, server: &str) -> Result<String, GatewaySetupError> {
    use crate::gateway::setup::{InternalServer, setup};
    let kind = InternalServer::parse(server).ok_or_else(|| GatewaySetupError::UnknownServer(server.to_owned()))?;
    let Some(g) = &settings.gateway else {
        let file = settings.source.as_ref().map_or("the built-in default".to_owned(), |p| p.display().to_string());
        return Err(GatewaySetupError::NoGateway(file));
    };
    // The CA the internal server must trust: the operator's, or drawbridge's own (created now
    // if it does not exist, so the file can be handed over before the first start).
    let ca = crate::gateway::GatewayCa::open(g.ca_cert.as_deref(), g.ca_key.as_deref(), &settings.data_dir)?;
    let path = std::fs::canonicalize(ca.cert_path()).unwrap_or_else(|_| ca.cert_path().to_owned());
    Ok(setup(kind, g, &settings.domains, &path)?)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::LogFormat;
    use crate::text::is_unsafe;

    #[test]
    fn colours_only_for_text_to_a_terminal_without_no_color() {
        assert!(log_colours(LogFormat::Text, true, None));
        assert!(log_colours(LogFormat::Text, true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!log_colours(LogFormat::Text, true, Some(OsStr::new("1"))));
        assert!(!log_colours(LogFormat::Text, true, Some(OsStr::new("false"))), "any value disables colours");
        assert!(!log_colours(LogFormat::Text, false, None), "a file, a pipe, the journal");
        assert!(!log_colours(LogFormat::Json, true, None));
    }

    /// What a subscriber wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A hostile string logged raw (a call site that forgot [`crate::text::clip`]) in both
    /// formats: one line per event, nothing unsafe raw, and JSON that parses back to it.
    fn logged(format: LogFormat, colours: bool) -> String {
        let out = Captured::default();
        let make = {
            let out = out.clone();
            move || out.clone()
        };
        let sub = log_subscriber(format, tracing_subscriber::EnvFilter::new("drawbridge=info"), colours, make);
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(stream = "s1", remote = HOSTILE, condition = %"policy-violation", "closing {HOSTILE}");
            tracing::info!(stream = "s2", "plain");
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    const HOSTILE: &str =
        "evil.test\n2026-12-04T16:00:00Z  INFO drawbridge: forged\r\x1b[2J\x07\u{7f}\u{85}\u{9b}\u{202e}\u{2066}\u{2028}\u{feff}";

    #[test]
    fn json_lines_carry_the_fields_and_nothing_raw() {
        let text = logged(LogFormat::Json, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            assert!(!line.chars().any(is_unsafe), "raw: {line:?}");
        }
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "drawbridge::cli::tests");
        assert_eq!(v["fields"]["message"], format!("closing {HOSTILE}"));
        assert_eq!(v["fields"]["stream"], "s1");
        assert_eq!(v["fields"]["remote"], HOSTILE);
        assert_eq!(v["fields"]["condition"], "policy-violation");
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!((&v["level"], &v["fields"]["message"]), (&"INFO".into(), &"plain".into()));
    }

    #[test]
    fn text_lines_stay_lines_with_nothing_raw() {
        for colours in [false, true] {
            let text = logged(LogFormat::Text, colours);
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            assert!(lines[0].contains("closing evil.test\\n2026-12-04T16:00:00Z") && lines[0].contains("\\u{202e}"), "{text}");
            // With colours, ESC is the subscriber's own codes only (it escapes ESC in values).
            let raw = |c: char| is_unsafe(c) && !(colours && c == '\x1b');
            for line in &lines {
                assert!(!line.chars().any(raw), "raw: {line:?}");
            }
            assert!(!text.contains("\x1b[2J"), "{text:?}");
            assert_eq!(text.contains('\x1b'), colours, "{text:?}");
        }
    }
}
