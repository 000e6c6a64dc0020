//! Files that hold secrets, checked at start: the config file when it holds component
//! secrets, `[[component]] secret_file`s, the TLS key (`tls.key`, or the self-signed one
//! drawbridge made in `DATA_DIR/tls/`), and the gateway CA's key (`gateway.ca_key`, or
//! drawbridge's own in `DATA_DIR/gateway/`). Whoever reads one of them can pass for this
//! server (or for a component) to its peers, so a file other local users can read or write
//! is named in a warning with its mode and the `chmod` that fixes it. drawbridge does not
//! change the operator's files itself (a group-readable key may be deliberate).
//!
//! The data dir and the database (the dialback secret) are checked by the store
//! ([`crate::store::too_wide`]).

use std::path::{Path, PathBuf};

use crate::config::Settings;

/// The files in `settings` that hold secrets, each with what it holds (for the warning).
pub fn secret_files(settings: &Settings) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if let Some(src) = &settings.source {
        let inline: Vec<&str> = settings.components.list.iter().filter(|c| c.secret_file.is_none()).map(|c| c.domain.as_str()).collect();
        if !inline.is_empty() {
            out.push((src.clone(), format!("component secrets ({})", inline.join(", "))));
        }
        // Whoever reads the shared store's password reads the dialback secret and the
        // gateway CA's key kept there.
        if let crate::store::Backend::Postgres { conninfo } = &settings.store.backend
            && crate::store::postgres::parse_conninfo(conninfo).is_ok_and(|c| c.get_password().is_some())
        {
            out.push((src.clone(), "the PostgreSQL password (store.postgres)".into()));
        }
    }
    for c in &settings.components.list {
        if let Some(f) = &c.secret_file {
            out.push((f.clone(), format!("the secret of component {}", c.domain)));
        }
    }
    match &settings.tls.key {
        Some(k) => out.push((k.clone(), "the TLS private key (tls.key)".into())),
        None => out.push((settings.data_dir.join("tls").join("key.pem"), "the self-signed certificate's private key".into())),
    }
    if let Some(g) = &settings.gateway {
        match &g.ca_key {
            Some(k) => out.push((k.clone(), "the gateway CA's private key (gateway.ca_key)".into())),
            None => out.push((settings.data_dir.join("gateway").join("ca.key"), "the gateway CA's private key".into())),
        }
    }
    out
}

/// A warning if `path` can be read or written by its group or by other users: its mode, what
/// it holds, who can get at it, and the fix. `None` when it is private or does not exist
/// (yet: drawbridge creates its own files mode 0600).
pub fn too_open(path: &Path, holds: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    // The file a symlink points at is what others would read.
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    if mode & 0o066 == 0 {
        return None;
    }
    let mut who = Vec::new();
    for (bits, what) in [(0o040, "its group"), (0o004, "other users")] {
        if mode & bits != 0 {
            who.push(format!("readable by {what}"));
        }
    }
    for (bits, what) in [(0o020, "its group"), (0o002, "other users")] {
        if mode & bits != 0 {
            who.push(format!("writable by {what}"));
        }
    }
    let p = path.display();
    Some(format!("{p} is mode {mode:04o} and holds {holds}: {}; fix: chmod 600 {p}", who.join(", ")))
}

/// Every warning for `settings`' secret files (empty when all are private).
pub fn warnings(settings: &Settings) -> Vec<String> {
    secret_files(settings).iter().filter_map(|(p, holds)| too_open(p, holds)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn modes_open_to_group_or_others_are_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o700, 0o611] {
            assert_eq!(too_open(&file(dir.path(), "private", mode), "a key"), None, "{mode:o}");
        }
        let p = file(dir.path(), "config.toml", 0o644);
        assert_eq!(
            too_open(&p, "component secrets").unwrap(),
            format!(
                "{0} is mode 0644 and holds component secrets: readable by its group, readable by other users; fix: chmod 600 {0}",
                p.display()
            )
        );
        let w = too_open(&file(dir.path(), "g", 0o640), "a key").unwrap();
        assert!(w.contains("mode 0640") && w.contains("readable by its group;"), "{w}");
        let w = too_open(&file(dir.path(), "o", 0o602), "a key").unwrap();
        assert!(w.contains("mode 0602") && w.contains("writable by other users"), "{w}");
        // Missing: nothing to say (drawbridge creates its own files private).
        assert_eq!(too_open(&dir.path().join("absent"), "a key"), None);
        // Through a symlink, the target's mode counts.
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(dir.path().join("config.toml"), &link).unwrap();
        assert!(too_open(&link, "a key").is_some_and(|w| w.contains("0644")));
    }

    #[test]
    fn the_files_checked_follow_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = d.join("drawbridge.toml");
        let comps = "[components]\nlisten = [\"127.0.0.1:5347\"]\n[[component]]\ndomain = \"pubsub.localhost\"\n";
        // No component secret in the file: the config itself is not a secret; the
        // self-signed key is looked for where drawbridge makes it.
        let s = Settings::parse("[server]\ndata_dir = \"data\"\n", &cfg).unwrap();
        let files: Vec<PathBuf> = secret_files(&s).into_iter().map(|(p, _)| p).collect();
        assert_eq!(files, vec![d.join("data/tls/key.pem")]);
        // A secret inline: the config file is checked; a secret_file instead: that file.
        let s = Settings::parse(&format!("{comps}secret = \"0123456789abcdef\"\n"), &cfg).unwrap();
        assert!(secret_files(&s).iter().any(|(p, what)| *p == cfg && what.contains("pubsub.localhost")));
        // The shared store's password in the conninfo: the config is checked; without one, not.
        let pg = |conninfo: &str| format!("[store]\nbackend = \"postgres\"\npostgres = \"{conninfo}\"\n");
        let s = Settings::parse(&pg("host=db.internal dbname=drawbridge user=drawbridge password=s3cret"), &cfg).unwrap();
        assert!(secret_files(&s).iter().any(|(p, what)| *p == cfg && what.contains("PostgreSQL password")));
        let s = Settings::parse(&pg("postgresql://drawbridge:s3cret@db.internal/drawbridge"), &cfg).unwrap();
        assert!(secret_files(&s).iter().any(|(p, what)| *p == cfg && what.contains("PostgreSQL password")));
        let s = Settings::parse(&pg("host=/run/postgresql dbname=drawbridge user=drawbridge"), &cfg).unwrap();
        assert!(!secret_files(&s).iter().any(|(p, _)| *p == cfg), "no password, no secret in the config");
        std::fs::write(d.join("pubsub.secret"), "0123456789abcdef\n").unwrap();
        let text = format!(
            "{comps}secret_file = \"pubsub.secret\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[gateway]\ninternal = \"10.0.0.4:5269\"\nlisten = [\"10.0.0.5:5269\"]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\ninternal_ca = \"internal.pem\"\n"
        );
        let s = Settings::parse(&text, &cfg).unwrap();
        let files: Vec<PathBuf> = secret_files(&s).into_iter().map(|(p, _)| p).collect();
        assert_eq!(files, vec![d.join("pubsub.secret"), d.join("k.pem"), d.join("ca.key")]);
        // Each warned about by its mode.
        for (name, mode) in [("pubsub.secret", 0o644), ("k.pem", 0o600), ("ca.key", 0o640)] {
            let p = d.join(name);
            if !p.exists() {
                std::fs::write(&p, "x").unwrap();
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let w = warnings(&s);
        assert_eq!(w.len(), 2, "{w:#?}");
        assert!(w[0].contains("pubsub.secret is mode 0644 and holds the secret of component pubsub.localhost"), "{w:#?}");
        assert!(w[1].contains("ca.key is mode 0640 and holds the gateway CA's private key (gateway.ca_key)"), "{w:#?}");
    }
}
