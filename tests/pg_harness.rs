//! The tests' throw-away PostgreSQL (`common::postgres`): it starts, answers as the role
//! `drawbridge` on the conninfo it gives, keeps its data across a stop or a crash, runs
//! several at once independently, and leaves no process behind when dropped — also when the
//! test panics.

mod common;

use std::path::Path;
use std::time::Instant;

use common::postgres::{Postgres, is_postgres, run_psql};

/// PIDs of the processes whose command line mentions `dir` (a postmaster's `-D DIR/data`).
fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle.as_str())))
        .collect()
}

/// A psql as `drawbridge` in `SELECT pg_sleep(60)`, once the server runs the query.
fn sleeping_session(pg: &Postgres) -> std::process::Child {
    let session = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec psql -X -d '{}' -c 'SELECT pg_sleep(60)' >/dev/null 2>&1", pg.conninfo()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + *common::WAIT;
    while pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'") != "1" {
        assert!(Instant::now() < deadline, "the session's query did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    session
}

#[test]
fn answers_as_drawbridge_and_keeps_data_across_a_stop() {
    let t = Instant::now();
    let pg = Postgres::start();
    eprintln!("Postgres::start took {:?}", t.elapsed());
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert!(pg.conninfo().contains(&format!("host={}/run", pg.dir().display())), "{}", pg.conninfo());

    // As the role drawbridge, by the conninfo a client gets.
    run_psql(&pg.conninfo(), "CREATE TABLE kept (v text PRIMARY KEY); INSERT INTO kept VALUES ('row')").unwrap();
    assert_eq!(run_psql(&pg.conninfo(), "SELECT current_user, current_database()").unwrap(), "drawbridge|drawbridge");
    assert_eq!(pg.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'kept'"), "drawbridge");
    // The URL form names the same server and role.
    assert_eq!(run_psql(&pg.url(), "SELECT current_user, v FROM kept").unwrap(), "drawbridge|row");
    // Not a superuser: what the server is given is what it gets.
    assert_eq!(run_psql(&pg.conninfo(), "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").unwrap(), "f");

    let pid = pg.pid().expect("postmaster.pid while running");
    let procs = pg.processes();
    assert!(procs.len() > 1 && procs[0] == pid, "{procs:?}");
    pg.stop();
    assert!(pg.pid().is_none(), "postmaster.pid after stop");
    assert!(pg.processes().is_empty());
    assert!(!procs.iter().any(|&p| is_postgres(p)), "processes of the stopped server: {procs:?}");
    let err = pg.try_psql("SELECT 1").expect_err("psql on a stopped server");
    assert!(err.contains("No such file") || err.contains("could not connect"), "{err}");
    assert!(run_psql(&pg.conninfo(), "SELECT 1").is_err());

    let t = Instant::now();
    pg.start_again();
    eprintln!("Postgres::start_again took {:?}", t.elapsed());
    assert_ne!(pg.pid(), Some(pid), "a new postmaster");
    assert_eq!(run_psql(&pg.conninfo(), "SELECT v FROM kept").unwrap(), "row");
}

#[test]
fn committed_rows_survive_kill9() {
    let pg = Postgres::start();
    run_psql(&pg.conninfo(), "CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)").unwrap();
    // A session open at the crash.
    let mut session = sleeping_session(&pg);
    let procs = pg.processes();
    assert!(procs.len() > 1, "the postmaster and its helper processes: {procs:?}");
    pg.kill9();
    assert!(!procs.iter().any(|&p| is_postgres(p)), "left: {procs:?}");
    assert!(pg.processes().is_empty());
    let _ = session.wait();
    assert!(pg.try_psql("SELECT 1").is_err());
    pg.start_again();
    assert_eq!(run_psql(&pg.conninfo(), "SELECT count(*), sum(n) FROM t").unwrap(), "1000|500500");
    assert!(pg.log().contains("database system was interrupted"), "crash recovery, log:\n{}", pg.log());
}

#[test]
fn instances_at_once_are_independent() {
    let t = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Postgres::start);
        let b = s.spawn(Postgres::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("two Postgres::start at once took {:?}", t.elapsed());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.conninfo(), b.conninfo());
    assert_ne!(a.pid(), b.pid());

    run_psql(&a.conninfo(), "CREATE TABLE only_a (x int)").unwrap();
    assert_eq!(a.psql("SELECT to_regclass('only_a') IS NOT NULL"), "t");
    assert_eq!(b.psql("SELECT to_regclass('only_a') IS NOT NULL"), "f");

    a.stop();
    assert!(a.try_psql("SELECT 1").is_err());
    assert_eq!(b.psql("SELECT 2"), "2");
    drop(b);
    a.start_again();
    assert_eq!(a.psql("SELECT to_regclass('only_a') IS NOT NULL"), "t");
}

#[test]
fn drop_leaves_no_process_nor_dir() {
    let pg = Postgres::start();
    let dir = pg.dir().to_path_buf();
    // A session open while dropped (its backend must go too).
    let mut session = sleeping_session(&pg);
    let procs = pg.processes();
    assert!(!processes_mentioning(&dir).is_empty(), "the postmaster's command line names its dir");
    let t = Instant::now();
    drop(pg);
    eprintln!("drop took {:?}", t.elapsed());
    assert!(!procs.iter().any(|&p| is_postgres(p)), "left: {procs:?}");
    assert!(processes_mentioning(&dir).is_empty(), "left: {:?}", processes_mentioning(&dir));
    assert!(!dir.exists());
    let _ = session.wait();

    // Dropped while a test panics.
    let mut seen = None;
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pg = Postgres::start();
        seen = Some((pg.dir().to_path_buf(), pg.processes()));
        panic!("a failing test");
    }));
    assert!(unwound.is_err());
    let (dir, procs) = seen.unwrap();
    assert!(procs.len() > 1, "{procs:?}");
    assert!(!procs.iter().any(|&p| is_postgres(p)), "left: {procs:?}");
    assert!(processes_mentioning(&dir).is_empty(), "left: {:?}", processes_mentioning(&dir));
    assert!(!dir.exists());
}
