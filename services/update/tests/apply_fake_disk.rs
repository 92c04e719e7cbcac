//! The writer against a file-backed disk image with the gateway's GPT
//! layout (made by the image tool's GPT and ESP code, a real FAT32 made by
//! mtools). Every refusal hashes the inactive slot's partitions and the ESP
//! before and after: a refused bundle leaves them byte-identical.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gwos_signing::bundle::{self, BundleError, PartName};
use gwos_signing::{Manifest, ReleaseKey, Slot};
use gwos_update::apply::{self, ApplyError};
use gwos_update::boot::BootInfo;
use gwos_update::disk::{Disk, Part};
use gwos_update::{esp, status};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const ROOT_BLOCKS: u64 = 300;

struct Fixture {
    dir: tempfile::TempDir,
    disk: Disk,
    key: ReleaseKey,
}

fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let layout = gwos_image::gpt::layout(
            &[
                ("esp", gwos_image::gpt::TYPE_ESP, 40 * MIB),
                ("root-a", gwos_image::gpt::TYPE_ROOT_X86_64, 2 * MIB),
                ("verity-a", gwos_image::gpt::TYPE_ROOT_VERITY_X86_64, MIB),
                ("root-b", gwos_image::gpt::TYPE_ROOT_X86_64, 2 * MIB),
                ("verity-b", gwos_image::gpt::TYPE_ROOT_VERITY_X86_64, MIB),
                ("state", gwos_image::gpt::TYPE_VAR, MIB),
            ],
            b"update-test",
        )
        .unwrap();
        let mut f = std::fs::File::create(&img).unwrap();
        f.set_len(layout.size()).unwrap();
        gwos_image::gpt::write(&mut f, &layout).unwrap();
        let esp_part = layout.find("esp").unwrap();
        let files = vec![
            ("EFI/Linux/gwos-0.1.0-a.efi".to_string(), bytes(200_000, 1)),
            ("EFI/Linux/gwos-0.0.9-b.efi".to_string(), bytes(150_000, 2)),
            (
                "loader/loader.conf".to_string(),
                b"timeout 0\ndefault gwos-*\n".to_vec(),
            ),
        ];
        let esp_bytes =
            gwos_image::esp::build(esp_part.size(), 0x1234, 1_700_000_000, &files, dir.path())
                .unwrap();
        f.seek(SeekFrom::Start(esp_part.offset())).unwrap();
        f.write_all(&esp_bytes).unwrap();
        // Old slot B content, so "untouched" is about real bytes.
        let rb = layout.find("root-b").unwrap();
        f.seek(SeekFrom::Start(rb.offset())).unwrap();
        f.write_all(&bytes(rb.size() as usize, 3)).unwrap();
        f.sync_all().unwrap();
        let part = |l: &str| {
            let p = layout.find(l).unwrap();
            Part {
                label: l.into(),
                path: img.clone(),
                offset: p.offset(),
                size: p.size(),
            }
        };
        let disk = Disk {
            esp: part("esp"),
            root: [part("root-a"), part("root-b")],
            verity: [part("verity-a"), part("verity-b")],
        };
        Fixture {
            dir,
            disk,
            key: ReleaseKey::from_seed(&[42; 32]),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A real bundle: root data with its dm-verity tree, two UKIs.
    fn bundle(&self, key: &ReleaseKey, version: u64, floor: u64, version_id: &str) -> Vec<u8> {
        let root = bytes((ROOT_BLOCKS * 4096) as usize, version as u32 * 7);
        let salt = [0x5a; 32];
        let uuid = uuid::Uuid::from_bytes([7; 16]);
        let tree =
            gwos_core::verity::build(&root[..], ROOT_BLOCKS, &salt, uuid.as_bytes()).unwrap();
        let ukis = [
            bytes(300_000, 10 + version as u32),
            bytes(300_001, 20 + version as u32),
        ];
        let m = Manifest {
            format: 1,
            version,
            version_id: version_id.into(),
            security_floor: floor,
            slot: None,
            build_id: "feedface".into(),
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: ROOT_BLOCKS,
            data_size: ROOT_BLOCKS * 4096,
            hash_size: tree.hash_area.len() as u64,
            salt: hex::encode(salt),
            root_hash: hex::encode(tree.root_hash),
            verity_uuid: uuid.to_string(),
            uki_sha256: String::new(),
            fs_type: "erofs".into(),
            development: false,
        };
        let info = |b: &[u8]| (b.len() as u64, Sha256::digest(b).into());
        let layout = self.disk.layout_id();
        let head = bundle::sealed_header(
            &m,
            &layout,
            [
                info(&root),
                info(&tree.hash_area),
                info(&ukis[0]),
                info(&ukis[1]),
            ],
            key,
        )
        .unwrap();
        [head, root, tree.hash_area, ukis[0].clone(), ukis[1].clone()].concat()
    }

    fn v2(&self) -> Vec<u8> {
        self.bundle(&self.key, 2, 2, "0.2.0")
    }

    /// sha256 of the inactive (B) slot's partitions and of the ESP.
    fn slot_b_and_esp(&self) -> [String; 3] {
        let mut f = std::fs::File::open(&self.disk.esp.path).unwrap();
        let mut h = |p: &Part| {
            let mut v = vec![0u8; p.size as usize];
            f.seek(SeekFrom::Start(p.offset)).unwrap();
            f.read_exact(&mut v).unwrap();
            hex::encode(Sha256::digest(&v))
        };
        [
            h(self.disk.root(Slot::B)),
            h(self.disk.verity(Slot::B)),
            h(&self.disk.esp),
        ]
    }

    fn apply(&self, bundle: &[u8], boot: &BootInfo) -> Result<apply::Applied, ApplyError> {
        let keys = [self.key.public()];
        let env = apply::Env {
            disk: &self.disk,
            keys: &keys,
            boot,
            spool: self.path("state/spool"),
        };
        apply::apply(&env, &mut &bundle[..], &mut |_| {})
    }

    /// Applies `bundle`, expects a refusal, and checks slot B and the ESP are untouched.
    fn refused(&self, bundle: &[u8], boot: &BootInfo) -> ApplyError {
        let before = self.slot_b_and_esp();
        let e = self
            .apply(bundle, boot)
            .expect_err("bundle must be refused");
        assert_eq!(
            self.slot_b_and_esp(),
            before,
            "slot B or the ESP changed although the bundle was refused: {e}"
        );
        assert!(
            !self.path("state/spool").exists(),
            "spool left behind after {e}"
        );
        e
    }
}

fn running_a(floor: u64) -> BootInfo {
    BootInfo {
        slot: "A".into(),
        version: 1,
        version_id: "0.1.0".into(),
        security_floor: floor,
        trial: false,
        tries_left: None,
        blessed: true,
        last_bad: None,
    }
}

fn part_bytes(p: &Part, len: u64, at: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(&p.path).unwrap();
    let mut v = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(p.offset + at)).unwrap();
    f.read_exact(&mut v).unwrap();
    v
}

fn extract(p: &Part, to: &Path) {
    std::fs::write(to, part_bytes(p, p.size, 0)).unwrap();
}

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
