//! The writer against a file-backed disk image with the gateway's GPT
//! layout (made by the image tool's GPT and ESP code, a real FAT32 made by
//! mtools). Every refusal hashes the inactive slot's partitions and the ESP
//! before and after: a refused bundle leaves them byte-identical.

mod common;

use common::*;
use gwos_signing::bundle::{self, BundleError, PartName};
use gwos_signing::{ReleaseKey, Slot};
use gwos_update::apply::{self, ApplyError};
use gwos_update::boot::BootInfo;
use gwos_update::{esp, status};
use sha2::{Digest, Sha256};

#[test]
fn v2_bundle_fills_slot_b_and_installs_a_trial_uki() {
    let fx = Fixture::new();
    let b = fx.v2();
    let mut lines = Vec::new();
    let keys = [fx.key.public()];
    let boot = running_a(1);
    let env = apply::Env {
        disk: &fx.disk,
        keys: &keys,
        boot: &boot,
        spool: fx.path("state/spool"),
    };
    let done = apply::apply(&env, &mut &b[..], &mut |l| lines.push(l)).unwrap();
    assert_eq!(
        (done.slot, done.version, done.version_id.as_str()),
        ("B", 2, "0.2.0")
    );
    assert_eq!(done.uki, "gwos-0.2.0-b+3.efi");
    assert!(
        lines.iter().any(|l| l.contains("verified over the disk")),
        "{lines:?}"
    );

    // The reference tool agrees with what is on disk: veritysetup verify over root-b/verity-b.
    let h = bundle::read_header(&mut &b[..], &keys).unwrap();
    let (rb, vb) = (fx.path("root-b"), fx.path("verity-b"));
    extract(fx.disk.root(Slot::B), &rb);
    extract(fx.disk.verity(Slot::B), &vb);
    let o = std::process::Command::new("veritysetup")
        .arg("verify")
        .arg(&rb)
        .arg(&vb)
        .arg(&h.header.root_hash)
        .arg(format!("--data-blocks={ROOT_BLOCKS}"))
        .output()
        .expect("veritysetup (cryptsetup-bin)");
    assert!(
        o.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Stage 1 would accept verity-b's manifest region for slot b.
    let vp = fx.disk.verity(Slot::B);
    let region = part_bytes(vp, 65536, vp.size - 65536);
    let m = gwos_signing::open(&region, &keys).unwrap();
    assert_eq!((m.slot.as_deref(), m.version), (Some("b"), 2));

    // ESP: B's old entry is gone, the new trial entry is the signed UKI, A is untouched.
    let names: Vec<String> = esp::list(&fx.disk.esp)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["gwos-0.1.0-a.efi", "gwos-0.2.0-b+3.efi"]);
    let esp_img = part_bytes(&fx.disk.esp, fx.disk.esp.size, 0);
    let files = gwos_image::esp::read_files(esp_img, "EFI/Linux").unwrap();
    let (_, uki) = files
        .iter()
        .find(|(n, _)| n.ends_with("gwos-0.2.0-b+3.efi"))
        .unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(uki)),
        h.part(PartName::UkiB).sha256
    );
    // fsck.fat (dosfstools) finds the FAT consistent after our writes.
    let espf = fx.path("esp.img");
    extract(&fx.disk.esp, &espf);
    let o = std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&espf)
        .output()
        .expect("fsck.fat (dosfstools)");
    assert!(
        o.status.success(),
        "fsck.fat: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // update_status: A active, B on trial with 3 tries and v2's manifest.
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let st = status::status(&fx.disk, &keys, &boot, &fx.path("state"), None).unwrap();
    assert_eq!(st["slots"][0]["state"], "active");
    assert_eq!(st["slots"][1]["state"], "trial");
    assert_eq!(st["slots"][1]["tries_left"], 3);
    assert_eq!(st["slots"][1]["version_id"], "0.2.0");
    assert_eq!(st["slots"][1]["root_hash"], h.header.root_hash.as_str());
}

#[test]
fn one_byte_changed_in_the_header_is_refused_untouched() {
    let fx = Fixture::new();
    let mut b = fx.v2();
    b[bundle::PREFIX_LEN + 30] ^= 0x01;
    let e = fx.refused(&b, &running_a(1));
    assert!(
        matches!(e, ApplyError::Refused(BundleError::BadSignature(_))),
        "{e}"
    );
}

#[test]
fn one_byte_changed_in_the_payload_is_refused_untouched() {
    let fx = Fixture::new();
    let mut b = fx.v2();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a; // what the updates-ab scenario does
    let e = fx.refused(&b, &running_a(1));
    assert!(
        matches!(e, ApplyError::Refused(BundleError::HashMismatch { .. })),
        "{e}"
    );
    let mut b = fx.v2();
    let last = b.len() - 1; // the last byte of uki-b: the part slot B does not even keep
    b[last] ^= 0x01;
    let e = fx.refused(&b, &running_a(1));
    assert!(
        matches!(
            e,
            ApplyError::Refused(BundleError::HashMismatch {
                part: PartName::UkiB,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn bundle_signed_by_an_unknown_key_is_refused_untouched() {
    let fx = Fixture::new();
    let b = fx.bundle(&ReleaseKey::from_seed(&[99; 32]), 2, 2, "0.2.0");
    let e = fx.refused(&b, &running_a(1));
    assert!(
        matches!(e, ApplyError::Refused(BundleError::UnknownKey(_))),
        "{e}"
    );
}

#[test]
fn truncated_stream_is_refused_untouched() {
    let fx = Fixture::new();
    let b = fx.v2();
    for cut in [40, 3000, b.len() / 2, b.len() - 1] {
        let e = fx.refused(&b[..cut], &running_a(1));
        assert!(
            matches!(e, ApplyError::Refused(BundleError::Truncated { .. })),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn bundle_below_the_floor_is_refused_untouched_and_names_the_floor() {
    let fx = Fixture::new();
    let v1 = fx.bundle(&fx.key, 1, 1, "0.1.0");
    let e = fx.refused(&v1, &running_a(2));
    assert!(
        matches!(
            e,
            ApplyError::Refused(BundleError::BelowFloor {
                version: 1,
                floor: 2
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("security floor 2"), "{e}");
}

/// A trial of the running release (or an older one, above the floor) would
/// sort below the running entry in systemd-boot and never be tried.
#[test]
fn bundle_not_newer_than_the_running_release_is_refused_untouched() {
    let fx = Fixture::new();
    let same = fx.bundle(&fx.key, 1, 1, "0.1.0");
    let e = fx.refused(&same, &running_a(1));
    assert!(
        matches!(
            e,
            ApplyError::NotNewer {
                version: 1,
                running: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("not newer than the running release 0.1.0 (version 1)"),
        "{e}"
    );
}

#[test]
fn bundle_for_another_layout_is_refused_untouched() {
    let fx = Fixture::new();
    let mut other = Fixture::new();
    other.disk.root[0].size += MIB;
    other.disk.root[1].size += MIB;
    let b = other.bundle(&fx.key, 2, 2, "0.2.0");
    let e = fx.refused(&b, &running_a(1));
    assert!(
        matches!(e, ApplyError::Refused(BundleError::WrongLayout { .. })),
        "{e}"
    );
}

#[test]
fn no_update_during_an_unblessed_trial_boot() {
    let fx = Fixture::new();
    let boot = BootInfo {
        trial: true,
        blessed: false,
        tries_left: Some(2),
        ..running_a(1)
    };
    let e = fx.refused(&fx.v2(), &boot);
    assert!(
        matches!(
            e,
            ApplyError::TrialNotBlessed {
                slot: "A",
                other: "B"
            }
        ),
        "{e}"
    );
}

#[test]
fn rollback_needs_a_good_other_slot_and_marks_the_active_one_bad() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.path("state")).unwrap();
    let boot = running_a(1);
    // B's entry (gwos-0.0.9-b.efi) is good: rollback marks A's entry +0.
    let r = status::rollback(&fx.disk, &boot, &fx.path("state"), 1).unwrap();
    assert_eq!(r["next_boot"], "B");
    let names: Vec<String> = esp::list(&fx.disk.esp)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["gwos-0.0.9-b.efi", "gwos-0.1.0-a+0.efi"]);
    let keys = [fx.key.public()];
    let boot_b = BootInfo {
        slot: "B".into(),
        ..running_a(1)
    };
    let st = status::status(&fx.disk, &keys, &boot_b, &fx.path("state"), None).unwrap();
    assert_eq!(st["slots"][0]["state"], "bad");
    assert!(
        st["slots"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("update_rollback"),
        "{st}"
    );

    // After an update, B is only on trial: no rollback to it.
    let fx = Fixture::new();
    fx.apply(&fx.v2(), &boot).unwrap();
    let e = status::rollback(&fx.disk, &boot, &fx.path("state"), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("slot B is trial"), "{e}");
}

#[test]
fn disk_image_gpt_is_read_like_the_image_tool_wrote_it() {
    let fx = Fixture::new();
    let d = gwos_update::disk::Disk::from_image(&fx.disk.esp.path).unwrap();
    assert_eq!(d.esp, fx.disk.esp);
    assert_eq!(d.root, fx.disk.root);
    assert_eq!(d.verity, fx.disk.verity);
    assert_eq!(d.layout_id(), fx.disk.layout_id());
}

/// A failure after the slot is written but before the UKI is in place (here:
/// the ESP is too full for the UKI) leaves slot B without any boot entry, so
/// systemd-boot can only boot A; A's entry is untouched, and the next apply
/// clears the leftover temporary file.
#[test]
fn failure_while_installing_the_uki_leaves_slot_b_without_a_boot_entry() {
    let fx = Fixture::new();
    let a_before = part_bytes(fx.disk.root(Slot::A), fx.disk.root(Slot::A).size, 0);
    let b = fx.bundle_with_uki(&fx.key, 2, 2, "0.2.0", 39 * (1 << 20) + 600 * 1024);
    let e = fx.apply(&b, &running_a(1)).expect_err("the UKI cannot fit");
    assert!(matches!(e, ApplyError::Device(_)), "{e}");
    assert!(e.to_string().contains("ESP"), "{e}");
    let names: Vec<String> = esp::list(&fx.disk.esp)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["gwos-0.1.0-a.efi"], "only slot A may be bootable");
    assert_eq!(
        part_bytes(fx.disk.root(Slot::A), fx.disk.root(Slot::A).size, 0),
        a_before
    );
    // A retry with a bundle that fits succeeds.
    let done = fx.apply(&fx.v2(), &running_a(1)).unwrap();
    assert_eq!(done.uki, "gwos-0.2.0-b+3.efi");
}
