//! The Debian package's own files stay what they are derived from: the packaged config is
//! config.example.toml with the paths of a system install, the packaged unit is
//! assets/drawbridge.service with the packaged binary. tests/package.sh builds and checks
//! the .deb itself.
//!
//! After changing config.example.toml: `DRAWBRIDGE_BLESS=1 cargo test --test package`
//! rewrites assets/debian/drawbridge.toml.

use std::path::{Path, PathBuf};

use drawbridge::config::Settings;

fn file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(file(rel)).unwrap()
}

const DATA_DIR: &str = "/var/lib/drawbridge";
const CONTROL_SOCKET: &str = "/run/drawbridge/control.sock";

const CONFIG_HEADER: &str = "\
# As the Debian package installs it: config.example.toml with the paths of a system install
# (data in /var/lib/drawbridge, the control socket in /run/drawbridge/). Set server.domains,
# server.listen and [tls] for this server, then `systemctl start drawbridge`; the log is in
# the journal (journalctl -u drawbridge). Upstream derives it with tests/package.rs.

";

/// `from` replaced by `to` in `text`, where it must occur exactly once.
fn replace_once(text: &str, from: &str, to: &str, what: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{what}: expected the line {from:?} exactly once; if it changed, change its replacement in tests/package.rs"
    );
    text.replacen(from, to, 1)
}

/// The packaged config, from the example.
fn packaged_config(example: &str) -> String {
    let mut text = format!("{CONFIG_HEADER}{example}");
    text = replace_once(&text, "\ndata_dir = \"./drawbridge-data\"\n", &format!("\ndata_dir = \"{DATA_DIR}\"\n"), "config.example.toml");
    text = replace_once(
        &text,
        "\n# control_socket = \"./drawbridge-data/control.sock\"\n",
        &format!("\ncontrol_socket = \"{CONTROL_SOCKET}\"\n"),
        "config.example.toml",
    );
    text
}

#[test]
fn packaged_config_is_the_example_with_system_paths() {
    let expected = packaged_config(&read("config.example.toml"));
    if std::env::var_os("DRAWBRIDGE_BLESS").is_some() {
        // Written aside and renamed: the other tests read the file meanwhile.
        let tmp = file("assets/debian/.drawbridge.toml.new");
        std::fs::write(&tmp, &expected).unwrap();
        std::fs::rename(&tmp, file("assets/debian/drawbridge.toml")).unwrap();
    }
    let packaged = read("assets/debian/drawbridge.toml");
    if packaged != expected {
        let first =
            packaged.lines().zip(expected.lines()).position(|(a, b)| a != b).map_or("its end".to_owned(), |i| format!("line {}", i + 1));
        panic!(
            "assets/debian/drawbridge.toml has drifted from config.example.toml (first difference at {first}); \
             regenerate it with DRAWBRIDGE_BLESS=1 cargo test --test package"
        );
    }
}

/// Loaded by the project's own loader, the two differ in the paths only.
#[test]
fn packaged_config_loads_and_differs_from_the_example_in_paths_only() {
    // The packaged file as it will sit in /etc, but read from here.
    let packaged = Settings::parse(&read("assets/debian/drawbridge.toml"), Path::new("/etc/drawbridge/drawbridge.toml"))
        .expect("the packaged config loads");
    let example = Settings::parse(&read("config.example.toml"), Path::new("/etc/drawbridge/drawbridge.toml")).unwrap();
    assert_eq!(packaged.data_dir, Path::new(DATA_DIR));
    assert_eq!(packaged.control_socket, Path::new(CONTROL_SOCKET));
    assert_eq!(example.data_dir, Path::new("/etc/drawbridge/drawbridge-data"), "relative to the file");
    let without_paths = |s: &Settings| {
        let mut s = s.clone();
        s.data_dir = PathBuf::new();
        s.control_socket = PathBuf::new();
        format!("{s:?}")
    };
    assert_eq!(without_paths(&packaged), without_paths(&example));
}

/// The unit's directives, comments and blank lines aside.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect()
}

#[test]
fn packaged_unit_is_the_example_unit_with_the_packaged_binary() {
    let example = read("assets/drawbridge.service");
    let packaged = read("assets/debian/drawbridge.service");
    let expected: Vec<&str> = directives(&example)
        .into_iter()
        .map(|l| match l.split_once('=') {
            Some(("ExecStart", _)) => "ExecStart=/usr/bin/drawbridge --config /etc/drawbridge/drawbridge.toml serve",
            Some(("Documentation", _)) => "Documentation=man:drawbridge(1)",
            _ => l,
        })
        .collect();
    assert_eq!(directives(&packaged), expected, "assets/debian/drawbridge.service has drifted from assets/drawbridge.service");
    for must in
        ["User=drawbridge", "StateDirectory=drawbridge", "RuntimeDirectory=drawbridge", "ProtectSystem=strict", "NoNewPrivileges=true"]
    {
        assert!(directives(&packaged).contains(&must), "{must}");
    }
}

/// The unit's user is the one sysusers.d creates.
#[test]
fn sysusers_creates_the_units_user() {
    let sysusers = read("assets/debian/drawbridge.sysusers");
    let line = directives(&sysusers).into_iter().find(|l| l.starts_with("u ")).expect("a `u` line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], "drawbridge");
    assert!(line.ends_with(DATA_DIR), "home is the data directory: {line}");
}
