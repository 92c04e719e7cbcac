//! The kernel's build stamp (`uname -v`) is a function of the kernel's own
//! source (the linux-source-6.1 changelog date), never of HEAD's commit time
//! or SOURCE_DATE_EPOCH: a kernel cached by an older commit is then the same
//! bytes a cold build of a newer commit makes (docs/build.md).

use std::path::PathBuf;
use std::process::Command;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kernel-config/build-kernel.sh")
}

fn stamp_with(envs: &[(&str, &str)], cwd: &std::path::Path) -> String {
    let mut c = Command::new("bash");
    c.arg(script()).arg("--print-stamp").current_dir(cwd);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("bash runs");
    assert!(
        out.status.success(),
        "build-kernel.sh --print-stamp failed (needs linux-source-6.1: make deps): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn kernel_stamp_ignores_head_commit_time_and_source_date_epoch() {
    let d = tempfile::tempdir().unwrap();
    let git = |args: &[&str], when: &str| {
        let st = Command::new("git")
            .args(args)
            .current_dir(d.path())
            .env("GIT_AUTHOR_DATE", when)
            .env("GIT_COMMITTER_DATE", when)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    };
    git(&["init", "-q"], "@1000000000 +0000");
    git(
        &["commit", "-q", "--allow-empty", "-m", "old"],
        "@1000000000 +0000",
    );
    let old = stamp_with(&[("SOURCE_DATE_EPOCH", "1000000000")], d.path());
    git(
        &["commit", "-q", "--allow-empty", "-m", "new"],
        "@1900000000 +0000",
    );
    let new = stamp_with(&[("SOURCE_DATE_EPOCH", "1900000000")], d.path());
    let none = stamp_with(&[], d.path());
    assert_eq!(old, new, "the stamp followed HEAD / SOURCE_DATE_EPOCH");
    assert_eq!(old, none);
    assert_ne!(old, "@1000000000");
    assert_ne!(old, "@1900000000");
    // and it is the date of the source package's newest changelog entry
    let cl = Command::new("bash")
        .arg("-c")
        .arg("zcat /usr/share/doc/linux-source-6.1/changelog.Debian.gz | sed -n 's/^ -- .*>  //p' | { read -r d; date -u -d \"$d\" +@%s; }")
        .output()
        .unwrap();
    assert_eq!(old, String::from_utf8_lossy(&cl.stdout).trim());
}
