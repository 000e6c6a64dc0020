//! `drawbridge store migrate --to-postgres CONNINFO`: a stopped node's embedded store copied
//! into PostgreSQL ([`crate::store::transfer`]), then what was copied and the next step, for a
//! human or as JSON.

use std::io::{self, Write};

use crate::config::Settings;
use crate::store::transfer::{self, LEFT_OPEN, Report, TransferError};
use crate::text::escape;

/// Why `store migrate` failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreCommandError {
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("the data was copied, but writing the report failed: {0}")]
    Output(#[from] io::Error),
}

/// Copy the store of `settings`' data dir into `conninfo`, the rows carrying `node` (else
/// `[cluster] node`), and print what was copied and what to do next.
pub async fn migrate(
    settings: &Settings,
    conninfo: &str,
    node: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), StoreCommandError> {
    let node = node.unwrap_or(&settings.store.node);
    let report = transfer::to_postgres(&settings.data_dir, conninfo, node).await?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &report_json(&report, settings, conninfo)).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report_text(&report, settings, conninfo))?;
    }
    Ok(())
}

/// The conninfo as the config should carry it: as given, unless it holds a password (not
/// echoed to a terminal or a log).
fn config_conninfo(conninfo: &str) -> Option<&str> {
    let password = crate::store::postgres::parse_conninfo(conninfo).ok().is_some_and(|c| c.get_password().is_some());
    (!password).then_some(conninfo)
}

/// The lines the config needs to run this node on the shared store.
fn config_lines(report: &Report, conninfo: &str) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let postgres = match config_conninfo(conninfo) {
        Some(c) => format!("postgres = {}", quoted(c)),
        None => "postgres = \"…\"   # the CONNINFO given to --to-postgres (it holds a password)".to_owned(),
    };
    format!("[store]\nbackend = \"postgres\"\n{postgres}\n\n[cluster]\nnode = {}\n", quoted(&report.node))
}

fn config_file(settings: &Settings) -> String {
    match &settings.source {
        Some(p) => p.display().to_string(),
        None => "the config file (pass it with --config)".to_owned(),
    }
}

/// What was copied, and the next step.
pub fn report_text(report: &Report, settings: &Settings, conninfo: &str) -> String {
    let c = &report.copied;
    let yes = |b: bool| if b { "copied" } else { "none in the embedded store (made at first start)" };
    let mut rows: Vec<(&str, String)> = vec![
        ("dialback secret", yes(c.dialback_secret).to_owned()),
        ("familiarity secret", yes(c.familiar_secret).to_owned()),
        ("gateway CA", if c.gateway_ca { "copied (DATA_DIR/gateway/ca.pem, ca.key)" } else { "none made here" }.to_owned()),
        ("mode", c.mode.clone().unwrap_or_else(|| "none stored (policy.mode of the config applies)".into())),
        ("domains", c.domains.to_string()),
        ("policy log entries", c.policy_log.to_string()),
        ("verification outcomes", c.outcomes.to_string()),
        ("closed streams", c.history.to_string()),
        ("blocklist entries", c.rtbl_entries.to_string()),
        ("blocklist feeds", c.rtbl_feeds.to_string()),
        ("familiar pairs", c.familiar_pairs.to_string()),
    ];
    if c.left_open > 0 {
        rows[7].1 = format!("{} ({} left open, closed as \"{LEFT_OPEN}\")", c.history, c.left_open);
    }
    let mut s = format!(
        "Copied the embedded store of node {} ({}) into {}, in one transaction, in {:.1} s:\n",
        escape(&report.node),
        escape(&report.data_dir.join("db").display().to_string()),
        escape(&report.database),
        report.elapsed_ms as f64 / 1000.0,
    );
    for (what, n) in rows {
        s.push_str(&format!("  {what:<22} {n}\n"));
    }
    for (kind, n) in &report.skipped {
        s.push_str(&format!(
            "Not copied: {n} {kind} record{} that did not read (written by another version, or damaged) or that hold a NUL character (PostgreSQL's JSON cannot); still in the embedded store.\n",
            if *n == 1 { "" } else { "s" }
        ));
    }
    s.push_str("The embedded store is unchanged: this was a copy.\n\n");
    s.push_str(&format!("Next: in {} set\n\n", escape(&config_file(settings))));
    for line in config_lines(report, conninfo).lines() {
        if line.is_empty() {
            s.push('\n');
        } else {
            s.push_str(&format!("  {}\n", escape(line)));
        }
    }
    s.push_str(
        "\nthen start drawbridge (e.g. systemctl start drawbridge). More nodes join with the same [store] and a [cluster] node of their own.\n",
    );
    s
}

/// The report for scripts: what was copied, and the config the node needs now.
pub fn report_json(report: &Report, settings: &Settings, conninfo: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(report).expect("a report serialises");
    v["config_file"] = settings.source.as_ref().map(|p| p.display().to_string()).into();
    v["config"] = serde_json::json!({
        "store": { "backend": "postgres", "postgres": config_conninfo(conninfo) },
        "cluster": { "node": report.node },
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::transfer::Copied;

    fn report(left_open: usize) -> Report {
        Report {
            node: "edge-1".into(),
            database: "PostgreSQL database drawbridge on /run/postgresql (--to-postgres)".into(),
            data_dir: "/var/lib/drawbridge".into(),
            copied: Copied {
                dialback_secret: true,
                familiar_secret: false,
                gateway_ca: true,
                mode: Some("approval".into()),
                domains: 3,
                policy_log: 4,
                outcomes: 5,
                history: 6,
                left_open,
                rtbl_entries: 7,
                rtbl_feeds: 1,
                familiar_pairs: 0,
            },
            skipped: [("history", 2)].into_iter().collect(),
            elapsed_ms: 1234,
        }
    }

    fn settings() -> Settings {
        Settings::parse("[server]\ndomains = [\"home.test\"]\n", std::path::Path::new("/etc/drawbridge/drawbridge.toml")).unwrap()
    }

    #[test]
    fn the_text_says_what_was_copied_and_the_lines_the_config_needs() {
        let conninfo = r#"host=/run/postgresql dbname=drawbridge user='draw \'bridge\'' application_name="x""#;
        let t = report_text(&report(1), &settings(), conninfo);
        for want in [
            "Copied the embedded store of node edge-1 (/var/lib/drawbridge/db) into PostgreSQL database drawbridge",
            "in 1.2 s",
            "  mode                   approval\n",
            "  domains                3\n",
            "  closed streams         6 (1 left open, closed as \"drawbridge stopped without closing it (crash or kill)\")\n",
            "  familiarity secret     none in the embedded store",
            "  gateway CA             copied (DATA_DIR/gateway/ca.pem, ca.key)\n",
            "Not copied: 2 history records that did not read",
            "Next: in /etc/drawbridge/drawbridge.toml set\n",
            "  [store]\n  backend = \"postgres\"\n  postgres = ",
            "then start drawbridge",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
        let plain = report_text(&report(0), &settings(), "host=/run/postgresql dbname=drawbridge");
        assert!(plain.contains("  postgres = \"host=/run/postgresql dbname=drawbridge\"\n\n  [cluster]\n  node = \"edge-1\"\n"), "{plain}");
        // The lines are TOML that the config takes, whatever the conninfo's quotes.
        let lines: String = config_lines(&report(0), conninfo);
        let text = format!("[server]\ndomains = [\"home.test\"]\n{lines}");
        let s = Settings::parse(&text, std::path::Path::new("/tmp/x.toml")).unwrap();
        assert_eq!(s.store.backend, crate::store::Backend::Postgres { conninfo: conninfo.into() });
        assert_eq!(s.store.node, "edge-1");
    }

    #[test]
    fn a_password_is_not_echoed() {
        let conninfo = "host=db.example dbname=drawbridge user=drawbridge password=hunter2";
        let t = report_text(&report(0), &settings(), conninfo);
        assert!(!t.contains("hunter2") && t.contains("the CONNINFO given to --to-postgres (it holds a password)"), "{t}");
        let j = report_json(&report(0), &settings(), "postgresql://u:hunter2@db.example/drawbridge");
        assert!(!j.to_string().contains("hunter2"), "{j}");
        assert_eq!(j["config"]["store"]["postgres"], serde_json::Value::Null);
    }

    #[test]
    fn json_carries_the_counts_and_the_config() {
        let j = report_json(&report(0), &settings(), "host=/run/postgresql dbname=drawbridge");
        assert_eq!(j["node"], "edge-1");
        assert_eq!(j["copied"]["domains"], 3);
        assert_eq!(j["copied"]["mode"], "approval");
        assert_eq!(j["skipped"]["history"], 2);
        assert_eq!(j["config"]["store"]["postgres"], "host=/run/postgresql dbname=drawbridge");
        assert_eq!(j["config"]["cluster"]["node"], "edge-1");
        assert_eq!(j["config_file"], "/etc/drawbridge/drawbridge.toml");
    }
}
