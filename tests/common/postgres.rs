//! A throw-away PostgreSQL for tests: Debian's server binaries, a cluster in a short temp
//! dir under /tmp that listens on a Unix socket only (`DIR/run`), a role and a database
//! `drawbridge` owned by it. [`Postgres::start`] installs Debian's `postgresql` package first
//! if it is missing and we are root. Dropping a [`Postgres`] stops its server (also when the
//! test panics) and removes the dir. Instances are independent: several may run at once, in
//! one test binary or in several.
//!
//! PostgreSQL refuses to run as root: as root, `initdb` and `pg_ctl` run as the `postgres`
//! user the package creates (`runuser`), on a dir that user owns; as another user, as that
//! user. Clients connect by the socket with `trust` authentication (no password); TCP is off.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{WAIT, scaled};

/// A PostgreSQL server of its own, for one test.
pub struct Postgres {
    bin: PathBuf,
    /// `DIR`: `data/` (the cluster), `run/` (the socket), `server.log`.
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Installs PostgreSQL if needed, creates a cluster, starts it and creates the role and
    /// the database `drawbridge`. Panics (with the server's log) when any step fails.
    pub fn start() -> Postgres {
        let bin = server_bin().to_path_buf();
        // Short, for the socket path (`DIR/run/.s.PGSQL.5432` must stay under ~100 bytes).
        let dir = tempfile::Builder::new().prefix("dbpg").tempdir_in("/tmp").expect("temp dir for PostgreSQL");
        fs::create_dir(dir.path().join("run")).unwrap();
        if running_as_root() {
            let (uid, gid) = postgres_user();
            for d in [dir.path().to_path_buf(), dir.path().join("run")] {
                std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
            }
        }
        // Traversable by clients of other users (the socket's dir); `data/` is 0700 (initdb).
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let pg = Postgres { bin, dir };
        let data = pg.data();
        pg.server_cmd("initdb", |c| {
            c.arg("-D").arg(&data);
            c.args(["-U", "postgres", "--auth-local=trust", "--auth-host=reject", "--no-locale", "-E", "UTF8", "--no-sync"]);
        });
        let conf = format!(
            "\n# drawbridge tests\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 50\nshared_buffers = 32MB\n",
            pg.socket_dir().display()
        );
        let mut text = fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        fs::write(data.join("postgresql.conf"), text).unwrap();
        pg.start_again();
        let superuser = pg.conninfo_as("postgres", "postgres");
        for sql in ["CREATE ROLE drawbridge LOGIN", "CREATE DATABASE drawbridge OWNER drawbridge"] {
            run_psql(&superuser, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        pg
    }

    /// libpq key=value connection string for the role `drawbridge` on its database.
    pub fn conninfo(&self) -> String {
        self.conninfo_as("drawbridge", "drawbridge")
    }

    /// The same as a URL: `postgresql://drawbridge@/drawbridge?host=%2Ftmp%2F…%2Frun`.
    pub fn url(&self) -> String {
        format!("postgresql://drawbridge@/drawbridge?host={}", percent_encode(&self.socket_dir().to_string_lossy()))
    }

    /// `DIR` (the cluster is in `DIR/data`, the socket in `DIR/run`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The postmaster's PID while the server runs (first line of `DIR/data/postmaster.pid`).
    pub fn pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The server's live processes: the postmaster and its children (each child of a
    /// postmaster leads a session of its own: they are found by parent, not by group).
    pub fn processes(&self) -> Vec<u32> {
        match self.pid().filter(|&pid| is_postgres(pid)) {
            Some(pid) => std::iter::once(pid).chain(children(pid)).collect(),
            None => Vec::new(),
        }
    }

    /// Stops the server (fast: open sessions are ended, their transactions rolled back).
    pub fn stop(&self) {
        self.server_cmd("pg_ctl", |c| {
            c.arg("stop").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "-t"]).arg(bound_secs());
        });
    }

    /// Starts the server on the same data (after [`stop`](Self::stop) or
    /// [`kill9`](Self::kill9); [`start`](Self::start) starts it the first time).
    pub fn start_again(&self) {
        self.server_cmd("pg_ctl", |c| {
            c.arg("start").arg("-D").arg(self.data()).arg("-l").arg(self.log_path()).args(["-w", "-t"]).arg(bound_secs());
        });
    }

    /// SIGKILL to the postmaster and its children (backends and helpers): the database
    /// vanishes as in a crash. Returns once they are gone; the data stays, and
    /// [`start_again`](Self::start_again) recovers it (committed transactions included:
    /// fsync is off, but the machine does not crash, the kernel keeps what was written).
    pub fn kill9(&self) {
        let pid = self.pid().filter(|&pid| is_postgres(pid)).expect("kill9: the server is not running");
        let procs = kill9_all(pid);
        wait_gone(&procs).unwrap_or_else(|left| panic!("kill9: processes {left:?} of the postmaster {pid} still run"));
        // The lock files are stale now, but the postmaster's PID may still exist: until PID 1
        // reaps it (late or never in some containers and VMs) it is a zombie, which the next
        // postmaster takes for a live one ("lock file … already exists"; seen here). Or
        // another process may reuse it.
        let _ = fs::remove_file(self.data().join("postmaster.pid"));
        for e in fs::read_dir(self.socket_dir()).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".lock") {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Runs `sql` as the superuser `postgres` on the database `drawbridge` and returns psql's
    /// output (tuples only, unaligned, `|` between columns, one row a line, trimmed).
    /// Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// [`psql`](Self::psql), with psql's failure (its stderr) as the error.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        run_psql(&self.conninfo_as("postgres", "drawbridge"), sql)
    }

    /// The server's log (`DIR/server.log`), for a failing test's message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn conninfo_as(&self, user: &str, dbname: &str) -> String {
        format!("host={} dbname={dbname} user={user}", conninfo_value(&self.socket_dir().to_string_lossy()))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Runs the server program `prog` (initdb, pg_ctl) as the server's user; panics with its
    /// output and the server's log when it fails.
    fn server_cmd(&self, prog: &str, args: impl FnOnce(&mut Command)) {
        let mut c = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(prog));
            c
        } else {
            Command::new(self.bin.join(prog))
        };
        // A cwd the server's user can enter (initdb and the postmaster check theirs).
        c.current_dir(self.dir.path());
        args(&mut c);
        let out = run(&mut c, *WAIT + Duration::from_secs(10));
        if !out.ok {
            panic!("{prog} failed: {}\n{}\nserver log:\n{}", out.stdout, out.stderr, self.log());
        }
    }
}

impl Drop for Postgres {
    /// Stops the server (immediate) and waits until its processes are gone; the dir is then
    /// removed (the `TempDir`). Never panics: a failure is printed.
    fn drop(&mut self) {
        let procs = self.processes();
        let Some(&pid) = procs.first() else { return };
        let mut c = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        c.current_dir(self.dir.path()).arg("stop").arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "-t", "10"]);
        let stopped = try_run(&mut c, Duration::from_secs(20)).is_some_and(|o| o.ok);
        if !stopped || wait_gone(&procs).is_err() {
            let mut procs = procs;
            procs.extend(kill9_all(pid));
            if let Err(left) = wait_gone(&procs) {
                eprintln!("postgres: processes {left:?} of the postmaster {pid} ({}) survived SIGKILL", self.dir.path().display());
            }
        }
    }
}

/// Runs `sql` with psql on `conninfo` (a libpq key=value string or a URL): tuples only,
/// unaligned, no psqlrc, stops at the first error. Returns stdout trimmed, or stderr.
pub fn run_psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let mut c = Command::new(server_bin().join("psql"));
    c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql]);
    // Bounded: connecting, then each statement.
    c.env("PGCONNECT_TIMEOUT", "10").env("PGOPTIONS", format!("-c statement_timeout={}s", bound_secs()));
    let out = run(&mut c, *WAIT + Duration::from_secs(10));
    if out.ok { Ok(out.stdout.trim().to_string()) } else { Err(out.stderr.trim().to_string()) }
}

/// Whether `pid` is a live PostgreSQL server process (not a zombie: an exited postmaster,
/// orphaned when pg_ctl exits, stays one until PID 1 reaps it).
pub fn is_postgres(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == "postgres")
        && proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The live server processes whose parent is `ppid`.
fn children(ppid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, parent)| parent == ppid) && is_postgres(pid))
        .collect()
}

/// The bin dir of the newest installed PostgreSQL (`/usr/lib/postgresql/N/bin`), installed
/// first if missing.
fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = find_bin() {
            return bin;
        }
        if !running_as_root() {
            panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql");
        }
        install();
        find_bin().expect("no /usr/lib/postgresql/*/bin/initdb after installing postgresql")
    })
}

fn find_bin() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

/// `apt-get install postgresql`, one test binary at a time (an exclusive lock on a file);
/// Debian's own service, which the package may start, is stopped: tests start their own.
fn install() {
    let lock = fs::File::create("/tmp/drawbridge-pg-install.lock").expect("/tmp/drawbridge-pg-install.lock");
    lock.lock().expect("lock /tmp/drawbridge-pg-install.lock");
    if find_bin().is_some() {
        return; // another test binary installed it meanwhile
    }
    eprintln!("postgres: installing Debian's postgresql package");
    let limit = scaled(Duration::from_secs(600));
    for args in
        [&["update", "-qq"][..], &["install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", "postgresql"][..]]
    {
        let out = run(Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive"), limit);
        if !out.ok {
            panic!("apt-get {} failed: {}\n{}", args.join(" "), out.stdout, out.stderr);
        }
    }
    let _ = try_run(Command::new("service").args(["postgresql", "stop"]), *WAIT);
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// The uid and gid of the user `postgres` (the package creates it).
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = run(Command::new("id").args([flag, "postgres"]), *WAIT);
        assert!(out.ok, "no user postgres: {}", out.stderr);
        out.stdout.trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// State and parent of `pid`, from `/proc/PID/stat` (`pid (comm) state ppid …`).
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// SIGKILL to the postmaster `pid` and its children; returns their PIDs. The postmaster is
/// stopped (SIGSTOP) first, so that it starts no child between the look and the kill.
fn kill9_all(pid: u32) -> Vec<u32> {
    let kill = |signal: &str, pids: &[u32]| {
        let mut c = Command::new("kill");
        c.arg(signal).arg("--").args(pids.iter().map(u32::to_string));
        let _ = try_run(&mut c, *WAIT);
    };
    kill("-STOP", &[pid]);
    let procs: Vec<u32> = std::iter::once(pid).chain(children(pid)).collect();
    kill("-KILL", &procs);
    procs
}

/// Waits (bounded) until none of `procs` is a live server process; else the PIDs left.
fn wait_gone(procs: &[u32]) -> Result<(), Vec<u32>> {
    let deadline = Instant::now() + *WAIT;
    loop {
        let left: Vec<u32> = procs.iter().copied().filter(|&pid| is_postgres(pid)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `WAIT` in whole seconds, for pg_ctl's `-t` and the statement timeout.
fn bound_secs() -> String {
    WAIT.as_secs().max(1).to_string()
}

/// A libpq conninfo value, quoted if it needs it.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn percent_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `c` to its end within `limit`; panics if it cannot start or overruns.
fn run(c: &mut Command, limit: Duration) -> Output {
    let what = format!("{c:?}");
    try_run(c, limit).unwrap_or_else(|| panic!("{what} did not finish within {limit:?} (or did not start)"))
}

/// Runs `c` to its end within `limit` (killed if it overruns: `None`, as when it cannot start).
fn try_run(c: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = pipe.read_to_string(&mut buf);
            buf
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().ok()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A grandchild left holding the pipes (a postmaster does not: pg_ctl gives it the log)
    // would block these reads: only read after a normal exit.
    let status = status?;
    Some(Output { ok: status.success(), stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}
