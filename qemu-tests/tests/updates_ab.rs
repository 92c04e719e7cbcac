//! A/B slots through OVMF + systemd-boot boot counting: a trial slot is
//! blessed only after its services stay healthy for the window, the stored
//! security floor is raised then (and stage 1 refuses the older slot after
//! that), and a trial slot whose services never become healthy is given up
//! by PID 1 until its tries run out and the previous good slot boots again
//! by itself.
//!
//! The trial slot is prepared from the host ([`gwos_qemu_tests::slot`]): a
//! variant of the test image, built with the same release key, is written
//! into root-b/verity-b (manifest re-signed for slot b) and its UKI copied
//! to the ESP as `gwos-<version_id>-b+N.efi`, which is what the updater does.
//! Variants set `[site.boot] bless_after_secs = 5` to keep the suite short.

use std::time::Duration;

use gwos_qemu_tests::slot::{
    build_release, esp_ukis, install_slot_b, set, state_file, stored_floor,
};
use gwos_qemu_tests::{copy_image, direct_boot, out_dir, test_image, Boot, Qemu};

const BOOT: Duration = Duration::from_secs(300);

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gwos-ab")
        .tempdir_in(out_dir())
        .unwrap()
}

fn int(v: i64) -> toml::Value {
    toml::Value::Integer(v)
}

fn line_with<'a>(console: &'a str, pat: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.contains(pat))
        .unwrap_or_else(|| panic!("no line with {pat:?} in:\n{console}"))
}

/// v1 in slot A (never booted), v2 (security floor 2) as a trial in slot B
/// (`+3`): B boots, is blessed after 5 s of healthy services, the floor goes
/// to 2; A's UKI never carried a counter. After that, slot A (v1) is refused
/// by stage 1 naming both numbers.
#[test]
fn ab_trial_boot_blessed_after_window_raises_floor() {
    let v1 = test_image().unwrap();
    let v2 = build_release("v2", 2, "0.2.0", Some(2), |_| {}).unwrap();
    let wd = workdir();
    let disk = copy_image(&v1.join("gwos.img"), wd.path()).unwrap();
    let trial = install_slot_b(&disk, &v2, 3).unwrap();
    assert_eq!(trial, "gwos-0.2.0-b+3.efi");
    assert_eq!(
        esp_ukis(&disk).unwrap(),
        ["gwos-0.1.0-a.efi", "gwos-0.2.0-b+3.efi"]
    );
    assert_eq!(stored_floor(&disk).unwrap(), 0);

    let mut q = Qemu::start(&disk, Boot::Ovmf, None).unwrap();
    let c = q
        .wait_for("gwos: ready slot=B version=0.2.0 boot_ms=", BOOT)
        .unwrap();
    assert!(
        c.contains("gwos: security floor: stored 0, signed version 2 (manifest floor 2)"),
        "{c}"
    );
    assert!(
        c.contains("gwos: trial boot of gwos-0.2.0-b+2-1.efi (2 tries left): blessing after 5 s of healthy services"),
        "{c}"
    );
    let c = q
        .wait_for(
            "gwos: boot blessing: blessed gwos-0.2.0-b+2-1.efi -> gwos-0.2.0-b.efi (services healthy for 5 s)",
            Duration::from_secs(120),
        )
        .unwrap();
    let ready_at = c.find("gwos: ready slot=B").unwrap();
    assert!(
        ready_at < c.find("gwos: boot blessing:").unwrap(),
        "blessed before the ready line"
    );
    let c = q
        .wait_for_from(
            ready_at,
            // The end of the line (the console is written byte by byte).
            "\"security_floor\":2,\"trial\":false,\"tries_left\":null,\"blessed\":true,\"last_bad\":null,\"development\":true}",
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(
        c[ready_at..].contains("gwos: security floor raised from 0 to 2"),
        "{}",
        &c[ready_at..]
    );
    let st = c.rfind("gwos: boot.json: ").unwrap();
    let status: serde_json::Value =
        serde_json::from_str(c[st + 17..].lines().next().unwrap()).unwrap();
    assert_eq!(
        status,
        serde_json::json!({"slot": "B", "version": 2, "version_id": "0.2.0", "security_floor": 2,
            "trial": false, "tries_left": null, "blessed": true, "last_bad": null, "development": true})
    );
    q.monitor("system_powerdown").unwrap();
    let c = q.wait_exit(Duration::from_secs(90)).unwrap();
    assert!(c.contains("gwos: powering off"), "{c}");
    assert_eq!(
        esp_ukis(&disk).unwrap(),
        ["gwos-0.1.0-a.efi", "gwos-0.2.0-b.efi"],
        "only the trial entry ever carried a counter"
    );
    assert_eq!(stored_floor(&disk).unwrap(), 2);

    // Slot A (version 1) on the same disk: stage 1 refuses it below the floor.
    let mut q = Qemu::start(&disk, direct_boot(&v1, "").unwrap(), None).unwrap();
    let c = q
        .wait_for(
            "gwos: FATAL: signed version 1 is below the stored security floor 2; refusing to boot an older release",
            Duration::from_secs(120),
        )
        .unwrap();
    let c = q.wait_exit(Duration::from_secs(60)).unwrap_or(c);
    assert!(
        !c.contains("mounted read-only") && !c.contains("gwos: ready"),
        "{c}"
    );
}

/// v1 good in slot A; v3 in slot B as a trial (`+2`) whose control service
/// cannot bind its address, so a required service never becomes healthy.
/// PID 1 gives up at the deadline twice (tries 1, then 0 left) and reboots
/// unblessed each time; then systemd-boot boots slot A by itself, which
/// reports the last bad boot and why (last_bad.json on /var, boot.json).
#[test]
fn ab_rollback_unhealthy_trial_boots_previous_slot() {
    let v1 = test_image().unwrap();
    let v3 = build_release("v3-unhealthy", 3, "0.3.0", None, |c| {
        set(c, &["site", "boot"], "bless_deadline_secs", int(90));
        // Valid config, but not an address of the gateway: control's bind fails at run time.
        set(
            c,
            &["site", "control"],
            "listen",
            toml::Value::String("10.0.2.99:2222".into()),
        );
    })
    .unwrap();
    let wd = workdir();
    let disk = copy_image(&v1.join("gwos.img"), wd.path()).unwrap();
    install_slot_b(&disk, &v3, 2).unwrap();

    let mut q = Qemu::start_rebooting(&disk, Boot::Ovmf).unwrap();
    // The reason names what was unhealthy at the deadline: control, never
    // healthy (others may still be starting under a loaded TCG host).
    let why_prefix =
        "required services were not healthy for 5 s in a row within 90 s of boot (unhealthy now: ";
    let reason_of = |line: &str| -> String {
        let r = line
            .split("gwos: boot NOT blessed: ")
            .nth(1)
            .and_then(|r| r.split("; rebooting without blessing").next())
            .unwrap_or_else(|| panic!("no reason in {line:?}"))
            .to_string();
        assert!(r.starts_with(why_prefix), "{r}");
        let unhealthy = r[why_prefix.len()..].trim_end_matches(')');
        assert!(
            unhealthy.split(", ").any(|s| s == "control"),
            "control not among the unhealthy: {r}"
        );
        r
    };
    let c = q
        .wait_for(
            "gwos: trial boot of gwos-0.3.0-b+1-1.efi (1 tries left)",
            BOOT,
        )
        .unwrap();
    let first = c.len();
    let c = q
        .wait_for_from(
            first,
            "; rebooting without blessing (1 tries left for gwos-0.3.0-b+1-1.efi)",
            BOOT,
        )
        .unwrap();
    reason_of(line_with(&c[first..], "gwos: boot NOT blessed: "));
    let second = c.len();
    let c = q
        .wait_for_from(
            second,
            "; rebooting without blessing (0 tries left for gwos-0.3.0-b+0-2.efi)",
            BOOT + BOOT,
        )
        .unwrap();
    let why = reason_of(line_with(&c[second..], "gwos: boot NOT blessed: "));
    assert!(
        c[second..].contains("gwos: trial boot of gwos-0.3.0-b+0-2.efi (0 tries left)"),
        "{}",
        &c[second..]
    );
    let third = c.len();
    let c = q
        .wait_for_from(third, "gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();
    let tail = &c[third..];
    assert!(
        tail.contains(&format!("gwos: last bad boot: slot B version 0.3.0: {why}")),
        "{tail}"
    );
    assert!(
        tail.contains("gwos: boot blessing: not a counted (trial) boot, nothing to bless"),
        "{tail}"
    );
    let st = tail.find("gwos: boot.json: ").unwrap();
    let status: serde_json::Value =
        serde_json::from_str(tail[st + 17..].lines().next().unwrap()).unwrap();
    assert_eq!(status["slot"], "A");
    assert_eq!(status["blessed"], true);
    assert_eq!(status["trial"], false);
    assert_eq!(
        status["last_bad"],
        serde_json::json!({"slot": "B", "version_id": "0.3.0", "reason": why})
    );
    q.monitor("system_powerdown").unwrap();
    q.wait_exit(Duration::from_secs(90)).unwrap();
    assert_eq!(
        esp_ukis(&disk).unwrap(),
        ["gwos-0.1.0-a.efi", "gwos-0.3.0-b+0-2.efi"],
        "the good slot's entry never carried a counter; the trial's tries are used up"
    );
    let lb = state_file(&disk, "/lib/gwos/boot/last_bad.json")
        .unwrap()
        .expect("last_bad.json on the state partition");
    let lb: serde_json::Value = serde_json::from_str(&lb).unwrap();
    assert_eq!(lb["reason"], why.as_str());
    assert_eq!(
        stored_floor(&disk).unwrap(),
        1,
        "v1's floor, from its blessed boot"
    );
}

/// Power cut during a trial boot (QEMU killed right after PID 1 saw the
/// trial, before blessing): the good slot's UKI still has no counter (the
/// cut cost only the trial entry a try), and the next boot tries B again
/// and blesses it.
#[test]
fn ab_power_cut_during_trial_boot_costs_only_the_trial_a_try() {
    let v1 = test_image().unwrap();
    let v2 = build_release("v2-cut", 2, "0.2.0", Some(2), |_| {}).unwrap();
    let wd = workdir();
    let disk = copy_image(&v1.join("gwos.img"), wd.path()).unwrap();
    install_slot_b(&disk, &v2, 3).unwrap();
    let mut q = Qemu::start(&disk, Boot::Ovmf, None).unwrap();
    q.wait_for(
        "gwos: trial boot of gwos-0.2.0-b+2-1.efi (2 tries left)",
        BOOT,
    )
    .unwrap();
    drop(q); // power cut: QEMU killed
    assert_eq!(
        esp_ukis(&disk).unwrap(),
        ["gwos-0.1.0-a.efi", "gwos-0.2.0-b+2-1.efi"]
    );
    assert_eq!(
        stored_floor(&disk).unwrap(),
        0,
        "not raised before blessing"
    );

    let mut q = Qemu::start(&disk, Boot::Ovmf, None).unwrap();
    q.wait_for(
        "gwos: trial boot of gwos-0.2.0-b+1-2.efi (1 tries left)",
        BOOT,
    )
    .unwrap();
    q.wait_for(
        "gwos: boot blessing: blessed gwos-0.2.0-b+1-2.efi -> gwos-0.2.0-b.efi (services healthy for 5 s)",
        BOOT,
    )
    .unwrap();
    q.wait_for(
        "\"security_floor\":2,\"trial\":false,\"tries_left\":null,\"blessed\":true",
        Duration::from_secs(60),
    )
    .unwrap();
    q.monitor("system_powerdown").unwrap();
    q.wait_exit(Duration::from_secs(90)).unwrap();
    assert_eq!(
        esp_ukis(&disk).unwrap(),
        ["gwos-0.1.0-a.efi", "gwos-0.2.0-b.efi"]
    );
    assert_eq!(stored_floor(&disk).unwrap(), 2);
}
