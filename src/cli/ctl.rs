//! `drawbridge ctl`: one [`Request`] to a running server over its control socket, the answer
//! decoded into the engine's [`Reply`] and printed for a human ([`super::print`]) or as JSON.

use std::io::{self, Write};
use std::path::Path;

use super::{BlacklistCommand, CtlCommand, print};
use crate::control::{self, ControlError};
use crate::engine::{Reply, Request};
use crate::text::escape;

/// Why a `ctl` command could not be run (a refused request is an answer, not this).
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("--for must be longer than zero")]
    ZeroDuration,
    #[error("--for: {0}")]
    Duration(String),
    #[error("--expiring: {0}")]
    Expiring(String),
    #[error("reading standard input: {0}")]
    Stdin(io::Error),
    #[error("{file}: {err}")]
    File { file: String, err: io::Error },
    #[error("blacklist: give a DOMAIN (with --reason), or import / export")]
    BlacklistWhat,
    #[error("blacklist {0}: --reason TEXT is required")]
    BlacklistReason(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the server's answer is not what `{cmd}` expects: {err} (is the server a different version?)")]
    Decode { cmd: &'static str, err: serde_json::Error },
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
}

impl CtlCommand {
    /// The request this command sends, and whether its answer is printed as JSON. `stdin`
    /// reads standard input (`blacklist import -`).
    pub fn request(&self, stdin: impl FnOnce() -> io::Result<String>) -> Result<(Request, bool), CtlError> {
        let (req, json) = self.command_request(stdin)?;
        // A dry run sends the very change the command would make, to be judged instead.
        Ok(match (self.dry_run(), req.policy_change()) {
            (Some(days), Some(change)) => (Request::Preview { change, days }, json),
            _ => (req, json),
        })
    }

    /// `Some(days)` for a command run with `--dry-run`.
    fn dry_run(&self) -> Option<Option<u32>> {
        match self {
            CtlCommand::Approve { dry_run: true, days, .. }
            | CtlCommand::Block { dry_run: true, days, .. }
            | CtlCommand::Blacklist { list: None, dry_run: true, days, .. }
            | CtlCommand::Blacklist { list: Some(BlacklistCommand::Import { dry_run: true, days, .. }), .. }
            | CtlCommand::Unblock { dry_run: true, days, .. }
            | CtlCommand::Mode { dry_run: true, days, .. } => Some(*days),
            _ => None,
        }
    }

    /// The request the command makes for real.
    fn command_request(&self, stdin: impl FnOnce() -> io::Result<String>) -> Result<(Request, bool), CtlError> {
        Ok(match self {
            CtlCommand::Status { json } => (Request::Status, *json),
            CtlCommand::Connections { json, closed, cluster } => (Request::Connections { closed: *closed, cluster: *cluster }, *json),
            CtlCommand::Close { id } => (Request::Close { id: id.clone() }, false),
            CtlCommand::Reload => (Request::Reload, false),
            CtlCommand::Probe { domain, from, json } => (Request::Probe { domain: domain.clone(), from: from.clone() }, *json),
            CtlCommand::Verifications { domain, limit, json } => (Request::Verifications { domain: domain.clone(), limit: *limit }, *json),
            CtlCommand::Approve { domain, reason, json, .. } => {
                (Request::Approve { domain: domain.clone(), reason: reason.clone() }, *json)
            }
            CtlCommand::Block { domain, duration, reason, json, .. } => {
                let for_secs = match duration {
                    Some(d) => match crate::config::parse_duration(d) {
                        Ok(d) if !d.is_zero() => Some(d.as_secs().max(1)),
                        Ok(_) => return Err(CtlError::ZeroDuration),
                        Err(e) => return Err(CtlError::Duration(e.to_string())),
                    },
                    None => None,
                };
                (Request::Block { domain: domain.clone(), for_secs, reason: reason.clone() }, *json)
            }
            CtlCommand::Blacklist { list: Some(BlacklistCommand::Export), .. } => (Request::BlacklistExport, false),
            CtlCommand::Blacklist { list: Some(BlacklistCommand::Import { file, source, json, .. }), .. } => {
                let text = if file == "-" {
                    stdin().map_err(CtlError::Stdin)?
                } else {
                    std::fs::read_to_string(file).map_err(|err| CtlError::File { file: file.clone(), err })?
                };
                // The list's name: --source, else the file's name.
                let source = source
                    .clone()
                    .or_else(|| (file != "-").then(|| Path::new(file).file_name().map(|f| f.to_string_lossy().into_owned())).flatten());
                (Request::BlacklistImport { text, source, dry_run: false }, *json)
            }
            CtlCommand::Blacklist { list: None, domain, reason, json, .. } => {
                let Some(domain) = domain else { return Err(CtlError::BlacklistWhat) };
                let Some(reason) = reason else { return Err(CtlError::BlacklistReason(domain.clone())) };
                (Request::Blacklist { domain: domain.clone(), reason: reason.clone() }, *json)
            }
            CtlCommand::Unblock { domain, json, .. } => (Request::Unblock { domain: domain.clone() }, *json),
            CtlCommand::Mode { mode: Some(m), json, .. } => (Request::Mode { mode: m.clone() }, *json),
            CtlCommand::Mode { mode: None, json, .. } => (Request::Status, *json),
            CtlCommand::Pending { json } => (Request::Pending, *json),
            CtlCommand::Domains { state, json } => (Request::Domains { state: state.clone() }, *json),
            CtlCommand::Domain { domain, json } => (Request::Domain { domain: domain.clone() }, *json),
            CtlCommand::Explain { domain, json } => (Request::Explain { domain: domain.clone() }, *json),
            CtlCommand::Rtbl { json } => (Request::Rtbl, *json),
            CtlCommand::Metrics => (Request::Metrics, false),
            CtlCommand::Keep { domain, reason, json } => (Request::Keep { domain: domain.clone(), reason: reason.clone() }, *json),
            CtlCommand::History { domain, limit, json } => (Request::History { domain: domain.clone(), limit: *limit }, *json),
            CtlCommand::Certs { expiring, json } => {
                let expiring_s = match expiring {
                    Some(d) => Some(crate::config::parse_duration(d).map_err(CtlError::Expiring)?.as_secs()),
                    None => None,
                };
                (Request::Certs { expiring_s }, *json)
            }
        })
    }
}

/// Standard input, whole.
pub fn read_stdin() -> io::Result<String> {
    let mut t = String::new();
    io::Read::read_to_string(&mut io::stdin(), &mut t)?;
    Ok(t)
}

/// Run one `ctl` command against the server at `socket`: the answer to `out`, a refusal to
/// `err`. True when it succeeded (the exit status).
pub async fn run(socket: &Path, cmd: &CtlCommand, out: &mut impl Write, err: &mut impl Write) -> Result<bool, CtlError> {
    let (req, json) = cmd.request(read_stdin)?;
    let resp = control::request(socket, &req).await?;
    if !resp.ok {
        writeln!(err, "drawbridge: {}", escape(resp.error.as_deref().unwrap_or("request failed")))?;
        return Ok(false);
    }
    answer(cmd, &req, json, resp.data.unwrap_or(serde_json::Value::Null), out)
}

/// Print a successful answer's payload (`data`) to `req`: as JSON, or decoded into its
/// [`Reply`] for [`print::reply`]. True unless the answer reports a failure (a failed probe).
pub fn answer(cmd: &CtlCommand, req: &Request, json: bool, mut data: serde_json::Value, out: &mut impl Write) -> Result<bool, CtlError> {
    let decode = |data| Reply::decode(req, data).map_err(|err| CtlError::Decode { cmd: cmd.name(), err });
    if json {
        writeln!(out, "{}", json_for_terminal(&serde_json::to_string_pretty(&data).unwrap_or_default()))?;
        return Ok(match decode(data)? {
            Reply::Probe(r) => r.ok,
            _ => true,
        });
    }
    // Everything printed is the engine's strings: a peer's names and words are in them, and
    // an engine (a buggy one, an old store) may not have escaped them. The list export is
    // lines of domains, escaped line by line by its printer.
    if !matches!(cmd, CtlCommand::Blacklist { list: Some(BlacklistCommand::Export), .. }) {
        escape_strings(&mut data);
    }
    Ok(print::reply(cmd, &decode(data)?, out)?)
}

impl CtlCommand {
    /// The subcommand's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            CtlCommand::Status { .. } => "status",
            CtlCommand::Connections { .. } => "connections",
            CtlCommand::Close { .. } => "close",
            CtlCommand::Reload => "reload",
            CtlCommand::Probe { .. } => "probe",
            CtlCommand::Verifications { .. } => "verifications",
            CtlCommand::Approve { .. } => "approve",
            CtlCommand::Block { .. } => "block",
            CtlCommand::Blacklist { .. } => "blacklist",
            CtlCommand::Unblock { .. } => "unblock",
            CtlCommand::Mode { .. } => "mode",
            CtlCommand::Pending { .. } => "pending",
            CtlCommand::Domains { .. } => "domains",
            CtlCommand::Domain { .. } => "domain",
            CtlCommand::Explain { .. } => "explain",
            CtlCommand::Rtbl { .. } => "rtbl",
            CtlCommand::Metrics => "metrics",
            CtlCommand::Keep { .. } => "keep",
            CtlCommand::History { .. } => "history",
            CtlCommand::Certs { .. } => "certs",
        }
    }
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
        if c != '\n' && crate::text::is_unsafe(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `ctl` output piped into `head` and the like: end quietly when the reader goes away, as
/// Unix tools do, instead of panicking on a broken pipe. (Only for `ctl`: the server keeps
/// Rust's default of ignoring SIGPIPE, so a vanished peer is an error, not a death.)
pub fn default_sigpipe() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::engine::PolicyChange;
    use clap::Parser;

    fn ctl(args: &[&str]) -> CtlCommand {
        let argv = ["drawbridge", "ctl"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).expect("parses").command {
            Some(Command::Ctl { cmd, .. }) => cmd,
            _ => panic!("not a ctl command"),
        }
    }

    fn no_stdin() -> io::Result<String> {
        panic!("standard input read")
    }

    #[test]
    fn commands_become_requests() {
        assert_eq!(ctl(&["connections"]).request(no_stdin).unwrap(), (Request::Connections { closed: false, cluster: false }, false));
        assert_eq!(
            ctl(&["connections", "--cluster", "--closed", "--json"]).request(no_stdin).unwrap(),
            (Request::Connections { closed: true, cluster: true }, true)
        );
        // Without --cluster the request is what an older server takes.
        assert_eq!(
            serde_json::to_string(&Request::Connections { closed: false, cluster: false }).unwrap(),
            r#"{"cmd":"connections","closed":false}"#
        );
        let (req, json) = ctl(&["block", "x.test", "--for", "2h", "--reason", "flood", "--json"]).request(no_stdin).unwrap();
        assert_eq!(req, Request::Block { domain: "x.test".into(), for_secs: Some(7200), reason: Some("flood".into()) });
        assert!(json);
        assert!(matches!(ctl(&["block", "x.test", "--for", "0s"]).request(no_stdin), Err(CtlError::ZeroDuration)));
        assert!(matches!(ctl(&["block", "x.test", "--for", "soon"]).request(no_stdin), Err(CtlError::Duration(_))));
        assert!(matches!(ctl(&["blacklist", "x.test"]).request(no_stdin), Err(CtlError::BlacklistReason(d)) if d == "x.test"));
        assert!(matches!(ctl(&["blacklist"]).request(no_stdin), Err(CtlError::BlacklistWhat)));
        // `mode` alone reads the status.
        assert_eq!(ctl(&["mode"]).request(no_stdin).unwrap().0, Request::Status);
        assert_eq!(ctl(&["mode", "open"]).request(no_stdin).unwrap().0, Request::Mode { mode: "open".into() });
        let (req, _) = ctl(&["blacklist", "import", "-", "--dry-run"]).request(|| Ok("spam.test\n".into())).unwrap();
        let change = PolicyChange::BlacklistImport { text: "spam.test\n".into(), source: None };
        assert_eq!(req, Request::Preview { change, days: None });
        assert_eq!(ctl(&["explain", "x.test", "--json"]).request(no_stdin).unwrap(), (Request::Explain { domain: "x.test".into() }, true));
        assert_eq!(ctl(&["rtbl"]).request(no_stdin).unwrap(), (Request::Rtbl, false));
        assert_eq!(ctl(&["certs"]).request(no_stdin).unwrap(), (Request::Certs { expiring_s: None }, false));
        assert_eq!(
            ctl(&["certs", "--expiring", "30d", "--json"]).request(no_stdin).unwrap(),
            (Request::Certs { expiring_s: Some(30 * 86_400) }, true)
        );
        assert!(matches!(ctl(&["certs", "--expiring", "soon"]).request(no_stdin), Err(CtlError::Expiring(e)) if e.contains("\"soon\"")));
        assert_eq!(
            ctl(&["keep", "x.test", "--reason", "still spamming", "--json"]).request(no_stdin).unwrap(),
            (Request::Keep { domain: "x.test".into(), reason: Some("still spamming".into()) }, true)
        );
    }

    /// `--dry-run` sends the change the command would make, to be judged instead: the same
    /// change, for every policy command.
    #[test]
    fn a_dry_run_previews_the_very_change_the_command_makes() {
        for args in [
            &["approve", "x.test", "--reason", "partner"][..],
            &["block", "x.test", "--for", "2h", "--reason", "flood"],
            &["blacklist", "x.test", "--reason", "spam"],
            &["unblock", "x.test"],
            &["mode", "allowlist"],
        ] {
            let (real, _) = ctl(args).request(no_stdin).unwrap();
            let dry: Vec<&str> = args.iter().copied().chain(["--dry-run", "--days", "7", "--json"]).collect();
            let (req, json) = ctl(&dry).request(no_stdin).unwrap();
            assert_eq!(req, Request::Preview { change: real.policy_change().unwrap(), days: Some(7) }, "{args:?}");
            assert!(json);
            let (req, _) = ctl(&args.iter().copied().chain(["--dry-run"]).collect::<Vec<_>>()).request(no_stdin).unwrap();
            assert!(matches!(req, Request::Preview { days: None, .. }), "{args:?}");
        }
        let parse = |args: &[&str]| Cli::try_parse_from(["drawbridge", "ctl"].iter().chain(args).copied()).map(|_| ());
        assert!(parse(&["block", "x.test", "--days", "7"]).is_err(), "--days without --dry-run");
        assert!(parse(&["block", "x.test", "--dry-run", "--days", "0"]).is_err());
        assert!(parse(&["mode", "--dry-run"]).is_err(), "a dry run of no mode change");
    }

    #[test]
    fn an_imported_file_is_its_own_source_unless_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("community.txt");
        std::fs::write(&file, "spam.test\n").unwrap();
        let path = file.to_str().unwrap();
        let (req, _) = ctl(&["blacklist", "import", path]).request(no_stdin).unwrap();
        assert!(matches!(req, Request::BlacklistImport { source: Some(s), .. } if s == "community.txt"));
        let (req, _) = ctl(&["blacklist", "import", path, "--source", "list"]).request(no_stdin).unwrap();
        assert!(matches!(req, Request::BlacklistImport { source: Some(s), .. } if s == "list"));
        let missing = dir.path().join("missing.txt");
        assert!(matches!(ctl(&["blacklist", "import", missing.to_str().unwrap()]).request(no_stdin), Err(CtlError::File { .. })));
    }

    fn printed(args: &[&str], data: serde_json::Value) -> (bool, String) {
        let cmd = ctl(args);
        let (req, json) = cmd.request(no_stdin).unwrap();
        let mut out = Vec::new();
        let ok = answer(&cmd, &req, json, data, &mut out).unwrap();
        (ok, String::from_utf8(out).unwrap())
    }

    #[test]
    fn what_the_engine_says_is_escaped_before_it_reaches_the_terminal() {
        let record = serde_json::json!({"domain": "evil\u{1b}[2J.test", "state": "blocked", "reason": "line\nforged"});
        let data = serde_json::json!({"record": record, "changed": true, "closed_streams": []});
        let (ok, out) = printed(&["block", "evil.test"], data.clone());
        assert!(ok);
        assert_eq!(out, "evil\\x1b[2J.test: blocked (line\\nforged)\n");
        // As JSON: the same value, with every unsafe character a \u escape.
        let (_, out) = printed(&["block", "evil.test", "--json"], data);
        assert!(out.contains("evil\\u001b[2J.test") && !out.contains('\u{1b}'), "{out}");
        // The export is lines of domains, escaped one by one.
        let (_, out) = printed(&["blacklist", "export"], serde_json::json!("a.test\nb\u{202e}.test\n"));
        assert_eq!(out, "a.test\nb\\u{202e}.test\n");
    }

    #[test]
    fn a_failed_probe_fails_the_command_in_both_forms() {
        let data = serde_json::json!({"ok": false, "from": "b.test", "to": "a.test", "rtt_ms": null, "stream": null,
            "peer_addr": null, "auth": null, "tls": null, "error": "no answer within 5s"});
        let (ok, out) = printed(&["probe", "a.test"], data.clone());
        assert!(!ok);
        assert_eq!(out, "probe b.test → a.test FAILED: no answer within 5s\n");
        assert!(!printed(&["probe", "a.test", "--json"], data).0);
    }

    #[test]
    fn an_answer_of_the_wrong_shape_is_an_error_not_a_guess() {
        let cmd = ctl(&["status"]);
        let mut out = Vec::new();
        let e = answer(&cmd, &Request::Status, false, serde_json::json!("ok"), &mut out).unwrap_err();
        assert!(matches!(e, CtlError::Decode { cmd: "status", .. }), "{e}");
        assert!(out.is_empty());
    }
}
