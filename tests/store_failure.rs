//! A policy change that cannot reach the disk leaves the previous policy in force and says
//! so. The data dir lives on a small tmpfs (mounted by the test; needs root, as CI has),
//! filled until writes fail. Ignored by a plain `cargo test` (a skip there is visible as
//! "ignored", not a quiet pass); `.ci/run` and README's test command run it by name with
//! `--ignored`, where it fails without root.

use std::process::Command;
use std::sync::Arc;

use drawbridge::domain::Domain;
use drawbridge::policy::{Change, Mode, Policy, Verdict};
use drawbridge::store::Store;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a small tmpfs: run with `cargo test --test store_failure -- --ignored`"]
async fn a_change_that_cannot_be_saved_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"]).arg(&mnt).status().is_ok_and(|s| s.success());
    // SAFETY: geteuid only reads the process's user id.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(ok, "mounting a tmpfs failed ({}): this test needs root", if root { "as root" } else { "not root" });
    let _m = Mount(mnt.clone());
    let store = Arc::new(Store::open(&mnt.join("data")).unwrap());
    let policy = Policy::load(store.clone(), Mode::Open).unwrap();
    let d = |s: &str| Domain::parse(s).unwrap();
    policy.apply(&d("first.test"), Change::Block { expires_ms: None }, "tester", Some("saved")).await.unwrap();
    // Fill the filesystem.
    let filler = mnt.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 16 << 20]);
    let mut failed = None;
    for i in 0..200 {
        let name = format!("d{i}-{}.test", "x".repeat(40));
        match policy.apply(&d(&name), Change::Blacklist { source: "operator".into() }, "tester", Some(&"r".repeat(2000))).await {
            Ok(_) => continue,
            Err(e) => {
                failed = Some((name, e.to_string()));
                break;
            }
        }
    }
    let (name, err) = failed.expect("writes kept succeeding on a full filesystem");
    // The change that failed is not in force, and the earlier one still is.
    assert!(matches!(policy.verdict(&d(&name)), Verdict::Allow), "{name} is refused although it was not saved ({err})");
    assert!(matches!(policy.verdict(&d("first.test")), Verdict::Refuse(_)));
    assert!(err.contains("database"), "{err}");
}
