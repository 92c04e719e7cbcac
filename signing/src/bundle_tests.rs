use super::*;
use crate::manifest::sample;

const LAYOUT: &str = "gwos-ab1:esp=1048576,root=65536,verity=131072";

struct Fixture {
    key: ReleaseKey,
    parts: [Vec<u8>; 4],
    bundle: Vec<u8>,
    header_len: usize,
}

fn fill(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn fixture_with(key: ReleaseKey, base: &Manifest) -> Fixture {
    let parts = [
        fill(base.data_size as usize, 1),
        fill(base.hash_size as usize, 2),
        fill(5000, 3),
        fill(5001, 4),
    ];
    let info = |p: &Vec<u8>| (p.len() as u64, Sha256::digest(p).into());
    let head = sealed_header(
        base,
        LAYOUT,
        [
            info(&parts[0]),
            info(&parts[1]),
            info(&parts[2]),
            info(&parts[3]),
        ],
        &key,
    )
    .unwrap();
    let header_len = head.len();
    let bundle = [head, parts.concat()].concat();
    Fixture {
        key,
        parts,
        bundle,
        header_len,
    }
}

fn fixture() -> Fixture {
    fixture_with(ReleaseKey::from_seed(&[5; 32]), &sample())
}

fn target() -> Target {
    Target {
        layout: LAYOUT.into(),
        floor: 1,
        root_partition: 65536,
        verity_partition: 131072,
        esp_partition: 1 << 20,
    }
}

/// Reads the whole bundle the way the writer does; returns the parts.
fn read_all(bundle: &[u8], keys: &[PublicKey]) -> Result<Vec<Vec<u8>>, BundleError> {
    let mut r = bundle;
    let h = read_header(&mut r, keys)?;
    h.check_target(&target())?;
    let mut out = Vec::new();
    for name in PART_ORDER {
        let mut v = Vec::new();
        copy_part(&mut r, h.part(name), &mut v, &mut |_| {})?;
        out.push(v);
    }
    expect_end(&mut r)?;
    Ok(out)
}

#[test]
fn round_trip_gives_every_part_and_both_manifests() {
    let f = fixture();
    let got = read_all(&f.bundle, &[f.key.public()]).unwrap();
    assert_eq!(got, f.parts.to_vec());
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    assert_eq!(h.manifest(Slot::A).slot.as_deref(), Some("a"));
    assert_eq!(h.manifest(Slot::B).slot.as_deref(), Some("b"));
    assert_eq!(
        h.manifest(Slot::B).uki_sha256,
        hex::encode(Sha256::digest(&f.parts[3]))
    );
    assert_eq!(
        crate::open(h.envelope(Slot::B), &[f.key.public()]).unwrap(),
        *h.manifest(Slot::B)
    );
    assert_eq!(
        h.payload_len(),
        f.parts.iter().map(|p| p.len() as u64).sum::<u64>()
    );
    assert_eq!(h.key_id, f.key.public().id());
}

#[test]
fn one_byte_changed_in_the_header_is_a_bad_signature() {
    let f = fixture();
    for i in [PREFIX_LEN, PREFIX_LEN + 100, f.header_len - 1] {
        let mut b = f.bundle.clone();
        b[i] ^= 0x01;
        let r = read_all(&b, &[f.key.public()]);
        assert!(
            matches!(r, Err(BundleError::BadSignature(_))),
            "byte {i}: {r:?}"
        );
    }
    let mut b = f.bundle.clone();
    b[40] ^= 0x80; // inside the signature
    let r = read_all(&b, &[f.key.public()]);
    assert!(matches!(r, Err(BundleError::BadSignature(_))), "{r:?}");
}

#[test]
fn one_byte_changed_in_the_payload_is_a_hash_mismatch_of_that_part() {
    let f = fixture();
    let cases = [
        (f.header_len, PartName::Root),
        (f.header_len + f.parts[0].len() + 7, PartName::Verity),
        (f.bundle.len() - 1, PartName::UkiB),
    ];
    for (i, want) in cases {
        let mut b = f.bundle.clone();
        b[i] ^= 0x5a;
        match read_all(&b, &[f.key.public()]) {
            Err(BundleError::HashMismatch { part, .. }) => assert_eq!(part, want, "byte {i}"),
            other => panic!("byte {i}: {other:?}"),
        }
    }
}

#[test]
fn unknown_key_is_refused_by_id() {
    let f = fixture();
    let other = ReleaseKey::from_seed(&[6; 32]).public();
    let r = read_all(&f.bundle, &[other]);
    assert!(
        matches!(&r, Err(BundleError::UnknownKey(id)) if *id == f.key.public().id_hex()),
        "{r:?}"
    );
}

#[test]
fn truncated_stream_names_where_it_ended() {
    let f = fixture();
    let cases: [(usize, &str); 4] = [
        (0, "header prefix"),
        (PREFIX_LEN - 1, "header prefix"),
        (f.header_len - 1, "header"),
        (f.bundle.len() - 1, "part uki-b"),
    ];
    for (n, want) in cases {
        match read_all(&f.bundle[..n], &[f.key.public()]) {
            Err(BundleError::Truncated { what, .. }) => assert_eq!(what, want, "len {n}"),
            other => panic!("len {n}: {other:?}"),
        }
    }
}

#[test]
fn bytes_after_the_last_part_are_refused() {
    let f = fixture();
    let mut b = f.bundle.clone();
    b.push(0);
    let r = read_all(&b, &[f.key.public()]);
    assert!(matches!(r, Err(BundleError::TrailingData)), "{r:?}");
}

#[test]
fn bad_magic_and_oversized_header() {
    let f = fixture();
    let mut b = f.bundle.clone();
    b[0] = b'X';
    assert!(matches!(
        read_all(&b, &[f.key.public()]),
        Err(BundleError::BadMagic)
    ));
    let mut b = f.bundle.clone();
    b[8..12].copy_from_slice(&(MAX_HEADER_LEN as u32 + 1).to_le_bytes());
    assert!(matches!(
        read_all(&b, &[f.key.public()]),
        Err(BundleError::HeaderTooLarge(..))
    ));
}

#[test]
fn bundle_for_another_layout_is_refused() {
    let f = fixture();
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    let t = Target {
        layout: "gwos-ab1:esp=1048576,root=131072,verity=131072".into(),
        ..target()
    };
    let r = h.check_target(&t);
    assert!(matches!(r, Err(BundleError::WrongLayout { .. })), "{r:?}");
}

#[test]
fn version_below_the_floor_is_refused_and_names_it() {
    let f = fixture(); // version 3
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    h.check_target(&Target {
        floor: 3,
        ..target()
    })
    .expect("a version equal to the floor is accepted");
    let e = h
        .check_target(&Target {
            floor: 4,
            ..target()
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            BundleError::BelowFloor {
                version: 3,
                floor: 4
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("security floor 4"), "{e}");
}

#[test]
fn part_larger_than_its_partition_is_refused() {
    let f = fixture();
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    let r = h.check_target(&Target {
        root_partition: 40959,
        ..target()
    });
    assert!(
        matches!(
            r,
            Err(BundleError::PartTooLarge {
                part: PartName::Root,
                size: 40960,
                limit: 40959
            })
        ),
        "{r:?}"
    );
    // The verity partition must also hold the 64 KiB manifest region.
    let r = h.check_target(&Target {
        verity_partition: MANIFEST_REGION_SIZE + 8191,
        ..target()
    });
    assert!(
        matches!(
            r,
            Err(BundleError::PartTooLarge {
                part: PartName::Verity,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn slot_manifest_signed_by_another_key_is_refused() {
    // A validly signed header whose manifest_a was sealed by a key the gateway does not trust.
    let f = fixture();
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    let stranger = ReleaseKey::from_seed(&[8; 32]);
    let mut header = h.header.clone();
    header.manifest_a = hex::encode(crate::seal(h.manifest(Slot::A), &stranger).unwrap());
    let b = seal_header(&header, &f.key).unwrap();
    let r = read_header(&mut &b[..], &[f.key.public()]);
    assert!(
        matches!(
            r,
            Err(BundleError::BadManifest {
                slot: "a",
                source: Error::UnknownKey(_)
            })
        ),
        "{r:?}"
    );
}

#[test]
fn header_disagreeing_with_its_manifests_is_refused() {
    let f = fixture();
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    let mut header = h.header.clone();
    header.version = 9;
    let b = seal_header(&header, &f.key).unwrap();
    let r = read_header(&mut &b[..], &[f.key.public()]);
    assert!(
        matches!(&r, Err(BundleError::Inconsistent(m)) if m.contains("version")),
        "{r:?}"
    );
    // Swapped envelopes: slot a's text says slot b.
    let mut header = h.header.clone();
    std::mem::swap(&mut header.manifest_a, &mut header.manifest_b);
    let b = seal_header(&header, &f.key).unwrap();
    let r = read_header(&mut &b[..], &[f.key.public()]);
    assert!(
        matches!(&r, Err(BundleError::Inconsistent(m)) if m.contains("slot a manifest's slot")),
        "{r:?}"
    );
}

#[test]
fn signed_but_malformed_header_json_is_refused() {
    let key = ReleaseKey::from_seed(&[5; 32]);
    for body in [&b"{}"[..], b"{\"format\":1", b"[]"] {
        let b = sign_raw_for_fuzzing(body, &key).unwrap();
        let r = read_header(&mut &b[..], &[key.public()]);
        assert!(matches!(r, Err(BundleError::Header(_))), "{r:?}");
    }
    let f = fixture();
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    let pretty = serde_json::to_vec_pretty(&h.header).unwrap();
    let b = sign_raw_for_fuzzing(&pretty, &key).unwrap();
    let r = read_header(&mut &b[..], &[key.public()]);
    assert!(
        matches!(&r, Err(BundleError::Header(m)) if m.contains("canonical")),
        "{r:?}"
    );
    let mut header = h.header.clone();
    header.parts.swap(2, 3);
    let r = seal_header(&header, &key);
    assert!(
        matches!(&r, Err(BundleError::Header(m)) if m.contains("order")),
        "{r:?}"
    );
}

#[test]
fn development_flag_travels_in_header_and_manifests() {
    let base = Manifest {
        development: true,
        ..sample()
    };
    let f = fixture_with(ReleaseKey::from_seed(&[5; 32]), &base);
    let h = read_header(&mut &f.bundle[..], &[f.key.public()]).unwrap();
    assert!(h.header.development);
    assert!(h.manifest(Slot::A).development && h.manifest(Slot::B).development);
}
