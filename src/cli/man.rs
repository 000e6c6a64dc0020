//! `drawbridge man`: one page, drawbridge(1), for every command. clap_mangen renders one
//! command per page; its synopsis and option lists are reused for each command as a section
//! of this page, so the page follows the clap definition the binary parses. The examples and
//! the files are written by hand (tests/man.rs checks that every command has an example).

use clap::Command;
use clap_mangen::Man;
use roff::{Roff, bold, italic, roman};

/// Examples, one per command at least: what it does, then the command line.
const EXAMPLES: &[(&str, &str)] = &[
    ("Look around without configuring anything: a demo server with simulated peers.", "drawbridge demo"),
    ("Run the server with the dashboard in this terminal.", "drawbridge --config /etc/drawbridge/drawbridge.toml run"),
    ("Run it headless (what the systemd unit does).", "drawbridge --config /etc/drawbridge/drawbridge.toml serve"),
    ("Open the dashboard of a running server over SSH.", "ssh -t host drawbridge --config /etc/drawbridge/drawbridge.toml attach"),
    ("Hosted domains, listeners and stream counts.", "drawbridge --config /etc/drawbridge/drawbridge.toml ctl status"),
    (
        "Live streams and the recently closed ones, as JSON.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl connections --closed --json",
    ),
    (
        "Every node's live streams on a shared store, with the node that has each.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl connections --cluster",
    ),
    ("Close one stream.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl close 7dc5616de9e0625eb53bf4bd277cf9f6"),
    ("Re-read renewed certificates (as SIGHUP).", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl reload"),
    (
        "Ping a remote server over federation.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl probe example.org --from chat.example.net",
    ),
    (
        "The last verification outcomes of one domain.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl verifications --domain example.org --limit 20",
    ),
    ("Let a domain federate in every mode.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl approve example.org --reason partner"),
    (
        "What approving a domain would change, nothing changed.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl approve example.org --dry-run",
    ),
    ("Block a domain for two hours.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl block spam.example --for 2h --reason flood"),
    (
        "The live streams a block would close and the domains of the last week it would refuse, as JSON.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl block spam.example --dry-run --days 7 --json",
    ),
    (
        "Blacklist a domain with all its subdomains.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl blacklist spam.example --reason \"sends spam\"",
    ),
    (
        "Which domains seen lately a blacklist entry would refuse, its subdomains included.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl blacklist spam.example --reason \"sends spam\" --dry-run",
    ),
    (
        "See what importing a list would change, then import it.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl blacklist import list.txt --source community --dry-run",
    ),
    ("Save the blacklist.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl blacklist export > blacklist.txt"),
    ("Clear a block or a blacklist entry.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl unblock spam.example"),
    (
        "The domains seen lately that clearing it would let in again.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl unblock spam.example --dry-run",
    ),
    (
        "The domains of the last 30 days that an allowlist would refuse, before switching.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl mode allowlist --dry-run",
    ),
    ("Hold every new domain for approval.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl mode approval"),
    ("Domains waiting for approval.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl pending"),
    ("Every blocked domain.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl domains --state blocked"),
    ("Everything known about one domain.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl domain example.org"),
    ("Why a domain is treated as it is, rule by rule.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl explain example.org"),
    ("The real-time blocklists followed and what they list.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl rtbl"),
    (
        "The metrics a Prometheus scrape of [metrics] listen gets, without HTTP.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl metrics",
    ),
    (
        "Remote domains whose certificate expires within 30 days (or has expired), soonest first.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl certs --expiring 30d",
    ),
    (
        "Keep a listed domain blocked after its listing is retracted.",
        "drawbridge -c /etc/drawbridge/drawbridge.toml ctl keep spam.example --reason \"seen here too\"",
    ),
    ("Closed streams of one domain.", "drawbridge -c /etc/drawbridge/drawbridge.toml ctl history --domain example.org --limit 10"),
    ("What an internal Prosody needs in gateway mode.", "drawbridge -c /etc/drawbridge/drawbridge.toml gateway setup prosody"),
    (
        "Move a stopped node's data (DATA_DIR/db) into an empty PostgreSQL database, as the user the data belongs to; then set [store] as it prints.",
        "sudo -u drawbridge drawbridge -c /etc/drawbridge/drawbridge.toml store migrate --to-postgres \"host=/run/postgresql dbname=drawbridge user=drawbridge\"",
    ),
    ("Read this page without installing it.", "drawbridge man | man -l -"),
    ("Completion for bash in this user's account.", "drawbridge completions bash > ~/.local/share/bash-completion/completions/drawbridge"),
];

/// The files: path, what it is.
const FILES: &[(&str, &str)] = &[
    (
        "/etc/drawbridge/drawbridge.toml",
        "The configuration the Debian package installs and its unit passes with --config. \
         Without --config, drawbridge uses its built-in default: domain localhost on 127.0.0.1:5269, \
         data in ./drawbridge-data under the working directory. Relative paths in a config file are \
         relative to the file's directory. Every key is documented in config.example.toml.",
    ),
    (
        "DATA_DIR",
        "server.data_dir: /var/lib/drawbridge in the package (the unit's StateDirectory), ./drawbridge-data \
         by default. What drawbridge writes there is for its own user only.",
    ),
    (
        "DATA_DIR/db/",
        "The database (sled): dialback secret, policy decisions and log, verification outcomes, stream history. \
         store migrate copies it into PostgreSQL, for [store] backend = \"postgres\".",
    ),
    (
        "DATA_DIR/tls/cert.pem, DATA_DIR/tls/key.pem",
        "The self-signed certificate created on first start when [tls] cert and key are unset.",
    ),
    ("DATA_DIR/gateway/", "Gateway mode: the minting CA (ca.pem is for the internal server) and the minted certificates."),
    ("DATA_DIR/drawbridge.log", "The log of run (the dashboard has the terminal) when log.file is unset; serve logs to standard error."),
    (
        "DATA_DIR/control.sock",
        "The control socket of ctl and attach (mode 0600), unless server.control_socket names another: \
         /run/drawbridge/control.sock in the package (the unit's RuntimeDirectory). ctl and attach find it \
         through --config, or take --socket.",
    ),
    (
        "/usr/lib/systemd/system/drawbridge.service",
        "The package's unit: serve as the user drawbridge; journalctl -u drawbridge shows its log.",
    ),
    ("/usr/lib/sysusers.d/drawbridge.conf", "Creates the system user drawbridge."),
];

/// The whole page, roff.
pub fn page() -> String {
    let cmd = super::command();
    let man = Man::new(cmd.clone()).title("DRAWBRIDGE").manual("User Commands");
    let mut page = String::new();
    // The title carries the apostrophe preamble once; the other pieces go without it.
    page.push_str(&rendered(|w| man.render_title(w)));
    push(&mut page, &rendered(|w| man.render_name_section(w)), false);
    push(&mut page, &rendered(|w| man.render_synopsis_section(w)), false);
    push(&mut page, &description().render(), false);
    push(&mut page, &rendered(|w| man.render_options_section(w)), false);
    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    r.text([roman("Without a command, drawbridge runs "), bold("run"), roman(". Every command takes "), bold("--config"), roman(".")]);
    push(&mut page, &r.render(), false);
    for sub in visible(&cmd) {
        commands(sub, &mut page);
    }
    push(&mut page, &examples().render(), false);
    push(&mut page, &files().render(), false);
    push(&mut page, &rest().render(), false);
    page
}

/// What one of clap_mangen's renderers writes (to a Vec: cannot fail).
fn rendered(f: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    let _ = f(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Appends a rendered piece without the apostrophe preamble the title already has, and
/// without its section headings if `no_headings` (a command's synopsis and options go
/// under that command's own heading).
fn push(page: &mut String, roff: &str, no_headings: bool) {
    for line in roff.lines() {
        if line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq") || (no_headings && line.starts_with(".SH ")) {
            continue;
        }
        page.push_str(line);
        page.push('\n');
    }
}

/// The subcommands a reader can type (not clap's own `help`).
pub fn visible(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// `sub` and its own subcommands, each a `.SS` named by its full command line: clap_mangen's
/// synopsis and options for it, and its whole doc comment.
fn commands(sub: &Command, page: &mut String) {
    let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_owned();
    // The global --config and --help are on every command; the top of the page has them.
    let mut shown = sub.clone();
    for id in ["config", "help"] {
        if shown.get_arguments().any(|a| a.get_id() == id) {
            shown = shown.mut_arg(id, |a| a.hide(true));
        }
    }
    let man = Man::new(shown.clone());
    let mut r = Roff::new();
    r.control("SS", [name.as_str()]);
    push(page, &r.render(), false);
    push(page, &rendered(|w| man.render_synopsis_section(w)), true);
    let mut r = Roff::new();
    if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
        r.control("PP", []);
        for line in about.to_string().lines() {
            if line.trim().is_empty() {
                r.control("PP", []);
            } else {
                r.text([roman(line)]);
            }
        }
    }
    push(page, &r.render(), false);
    if shown.get_arguments().any(|a| !a.is_hide_set()) {
        push(page, &rendered(|w| man.render_options_section(w)), true);
    }
    for s in visible(sub) {
        commands(s, page);
    }
}

fn description() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "drawbridge accepts and opens XMPP server-to-server streams for its hosted domains (RFC 6120), \
         secures them with STARTTLS or direct TLS, and authenticates remote domains by certificate \
         (SASL EXTERNAL) or Server Dialback. The operator decides who may federate: approve, block, \
         blacklist a domain with its subdomains, follow real-time blocklists, or switch the whole \
         server to approval or allowlist mode. Every decision, verification and stream is kept in a \
         database that survives restarts.",
    )]);
    r.control("PP", []);
    r.text([
        bold("serve"),
        roman(" runs it headless (under systemd), "),
        bold("run"),
        roman(" with a live dashboard in the terminal; "),
        bold("ctl"),
        roman(" and "),
        bold("attach"),
        roman(" talk to a running server over its control socket."),
    ]);
    r
}

fn examples() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXAMPLES"]);
    for (what, line) in EXAMPLES {
        r.control("PP", []);
        r.text([roman(*what)]);
        r.control("RS", ["4"]);
        r.control("nf", []);
        r.text([bold(*line)]);
        r.control("fi", []);
        r.control("RE", []);
    }
    r
}

fn files() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["FILES"]);
    for (path, what) in FILES {
        r.control("TP", []);
        r.text([italic(*path)]);
        r.text([roman(*what)]);
    }
    r
}

/// ENVIRONMENT, SIGNALS, EXIT STATUS, SEE ALSO.
fn rest() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold("RUST_LOG")]);
    r.text([roman("Overrides log.level with a tracing filter, e.g. drawbridge=debug.")]);
    r.control("SH", ["SIGNALS"]);
    r.control("TP", []);
    r.text([bold("SIGHUP")]);
    r.text([roman("serve re-reads the TLS certificate and key (as ctl reload); established streams stay.")]);
    r.control("TP", []);
    r.text([bold("SIGTERM, SIGINT")]);
    r.text([roman("Close every stream and stop.")]);
    r.control("SH", ["EXIT STATUS"]);
    r.control("TP", []);
    r.text([bold("0")]);
    r.text([roman("Success.")]);
    r.control("TP", []);
    r.text([bold("1")]);
    r.text([roman("A failure: the server could not start, a ctl command was refused or a probe failed; the message says why.")]);
    r.control("TP", []);
    r.text([bold("2")]);
    r.text([roman("A bad command line or configuration; the message names the file and the key.")]);
    r.control("SH", ["SEE ALSO"]);
    r.text([roman("systemctl(1), journalctl(1), systemd.exec(5), sysusers.d(5)")]);
    r
}
