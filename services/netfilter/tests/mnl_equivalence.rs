//! The libmnl stand-in (`mnl-static/mnl.c`, linked only into the static
//! gwosd) behaves like Debian's real libmnl 1.0.4: `mnl-static/equiv.c`
//! builds messages, attributes, nests and batches and runs the attribute
//! parser and the callback runner over good and malformed replies; built
//! once against `-lmnl` and once against the stand-in, both must print the
//! same bytes, return values and errnos. Needs gcc and libmnl-dev.

use std::path::Path;
use std::process::Command;

fn build_and_run(dir: &Path, name: &str, link: &[&str]) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("mnl-static");
    let exe = dir.join(name);
    let o = Command::new("gcc")
        .args(["-O1", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(src.join("equiv.c"))
        .args(
            link.iter()
                .map(|l| l.replace("{src}", &src.display().to_string())),
        )
        .output()
        .expect("gcc (build-essential) is needed");
    assert!(
        o.status.success(),
        "building the {name} harness: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let run = Command::new(&exe).output().expect("running the harness");
    assert!(run.status.success(), "{name} harness failed: {run:?}");
    String::from_utf8(run.stdout).expect("the harness prints text")
}

#[test]
fn stand_in_matches_real_libmnl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = build_and_run(dir.path(), "real", &["-lmnl"]);
    let stand_in = build_and_run(dir.path(), "stand-in", &["{src}/mnl.c"]);
    assert!(
        real.lines().count() > 30,
        "harness printed too little:\n{real}"
    );
    for (i, (r, s)) in real.lines().zip(stand_in.lines()).enumerate() {
        assert_eq!(r, s, "line {} differs (real libmnl first)", i + 1);
    }
    assert_eq!(real.lines().count(), stand_in.lines().count());
}
