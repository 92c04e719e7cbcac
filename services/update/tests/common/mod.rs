//! Shared by the update service's host tests: a file-backed disk image with
//! the gateway's GPT layout and real bundles for it.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gwos_signing::bundle;
use gwos_signing::{Manifest, ReleaseKey, Slot};
use gwos_update::apply::{self, ApplyError};
use gwos_update::boot::BootInfo;
use gwos_update::disk::{Disk, Part};
use sha2::{Digest, Sha256};

pub(crate) const MIB: u64 = 1 << 20;
pub(crate) const ROOT_BLOCKS: u64 = 300;

pub(crate) struct Fixture {
    pub dir: tempfile::TempDir,
    pub disk: Disk,
    pub key: ReleaseKey,
}

pub(crate) fn bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
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

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A real bundle: root data with its dm-verity tree, two UKIs.
    pub(crate) fn bundle(
        &self,
        key: &ReleaseKey,
        version: u64,
        floor: u64,
        version_id: &str,
    ) -> Vec<u8> {
        self.bundle_with_uki(key, version, floor, version_id, 300_000)
    }

    /// A bundle whose UKIs are `uki_len` (and `uki_len + 1`) bytes.
    pub(crate) fn bundle_with_uki(
        &self,
        key: &ReleaseKey,
        version: u64,
        floor: u64,
        version_id: &str,
        uki_len: usize,
    ) -> Vec<u8> {
        let root = bytes((ROOT_BLOCKS * 4096) as usize, version as u32 * 7);
        let salt = [0x5a; 32];
        let uuid = uuid::Uuid::from_bytes([7; 16]);
        let tree =
            gwos_core::verity::build(&root[..], ROOT_BLOCKS, &salt, uuid.as_bytes()).unwrap();
        let ukis = [
            bytes(uki_len, 10 + version as u32),
            bytes(uki_len + 1, 20 + version as u32),
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

    pub(crate) fn v2(&self) -> Vec<u8> {
        self.bundle(&self.key, 2, 2, "0.2.0")
    }

    /// sha256 of the inactive (B) slot's partitions and of the ESP.
    pub(crate) fn slot_b_and_esp(&self) -> [String; 3] {
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

    pub(crate) fn apply(
        &self,
        bundle: &[u8],
        boot: &BootInfo,
    ) -> Result<apply::Applied, ApplyError> {
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
    pub(crate) fn refused(&self, bundle: &[u8], boot: &BootInfo) -> ApplyError {
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

pub(crate) fn running_a(floor: u64) -> BootInfo {
    BootInfo {
        slot: "A".into(),
        version: 1,
        version_id: "0.1.0".into(),
        security_floor: floor,
        trial: false,
        tries_left: None,
        blessed: true,
        last_bad: None,
        development: false,
    }
}

pub(crate) fn part_bytes(p: &Part, len: u64, at: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(&p.path).unwrap();
    let mut v = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(p.offset + at)).unwrap();
    f.read_exact(&mut v).unwrap();
    v
}

pub(crate) fn extract(p: &Part, to: &Path) {
    std::fs::write(to, part_bytes(p, p.size, 0)).unwrap();
}
