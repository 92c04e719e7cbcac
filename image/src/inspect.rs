//! `gwos inspect <bundle|image>`: what is inside, with every signature and
//! hash checked. A bundle (`GWOSUPD1`): its signed header, both slot
//! manifests and every part, streamed and hashed. An image (GPT): the
//! partitions, each slot's signed manifest (or "empty") and the UKIs on the
//! ESP with their boot counters.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use gwos_signing::bundle::{self, PART_ORDER};
use gwos_signing::{PublicKey, Slot, MANIFEST_REGION_SIZE};

use crate::{esp, gpt};

pub fn inspect(path: &Path, keys: &[PublicKey]) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 8];
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    if n == 8 && &magic == bundle::MAGIC {
        bundle_report(f, keys)
    } else {
        image_report(f, keys)
    }
}

fn bundle_report(f: File, keys: &[PublicKey]) -> Result<String> {
    let mut r = BufReader::with_capacity(1 << 20, f);
    let h = bundle::read_header(&mut r, keys).context("bundle header refused")?;
    let hd = &h.header;
    let mut out = format!(
        "update bundle (format {}), signature OK: release key {}\nversion    {} ({})\nfloor      {}\nroot hash  {}\nlayout     {}\nbuild id   {}\n",
        hd.format,
        hex::encode(h.key_id),
        hd.version_id,
        hd.version,
        hd.security_floor,
        hd.root_hash,
        hd.layout,
        h.manifest(Slot::A).build_id,
    );
    if hd.development {
        out.push_str("DEVELOPMENT: signed with development keys\n");
    }
    out.push_str(&format!("header sha256 {}\n", hex::encode(h.header_sha256)));
    for name in PART_ORDER {
        let p = h.part(name);
        bundle::copy_part(&mut r, p, &mut std::io::sink(), &mut |_| {})
            .with_context(|| format!("part {name}"))?;
        out.push_str(&format!(
            "part {:<7} {:>11} bytes  sha256 {}  OK\n",
            name.as_str(),
            p.size,
            p.sha256
        ));
    }
    bundle::expect_end(&mut r)?;
    for slot in [Slot::A, Slot::B] {
        let m = h.manifest(slot);
        out.push_str(&format!(
            "manifest slot {}: signed, uki_sha256 {}\n",
            slot.lower(),
            m.uki_sha256
        ));
    }
    Ok(out)
}

fn image_report(mut f: File, keys: &[PublicKey]) -> Result<String> {
    let disk = gpt::read(&mut f).context("neither an update bundle nor a GPT disk image")?;
    let mut out = format!("disk image, GPT {} ({} bytes)\n", disk.guid, disk.size());
    for p in &disk.partitions {
        out.push_str(&format!(
            "  {:<9} offset {:>11} size {:>11}\n",
            p.name,
            p.offset(),
            p.size()
        ));
    }
    let (esp, root, verity) = (
        disk.find("esp")?,
        disk.find("root-a")?,
        disk.find("verity-a")?,
    );
    out.push_str(&format!(
        "layout {}\n",
        bundle::layout_id(esp.size(), root.size(), verity.size())
    ));
    for slot in ["a", "b"] {
        let v = disk.find(&format!("verity-{slot}"))?;
        let mut region = vec![0u8; MANIFEST_REGION_SIZE as usize];
        f.seek(SeekFrom::Start(
            v.offset() + v.size() - MANIFEST_REGION_SIZE,
        ))?;
        f.read_exact(&mut region)?;
        if region.iter().all(|&b| b == 0) {
            out.push_str(&format!("slot {slot}: empty\n"));
            continue;
        }
        let m = gwos_signing::open(&region, keys)
            .with_context(|| format!("slot {slot}: signed manifest refused"))?;
        out.push_str(&format!(
            "slot {slot}: version {} ({}), floor {}, root hash {}, signature OK{}\n",
            m.version_id,
            m.version,
            m.security_floor,
            m.root_hash,
            if m.development {
                ", DEVELOPMENT keys"
            } else {
                ""
            }
        ));
    }
    let mut esp_bytes = vec![0u8; esp.size() as usize];
    f.seek(SeekFrom::Start(esp.offset()))?;
    f.read_exact(&mut esp_bytes)?;
    for (name, bytes) in esp::read_files(esp_bytes, "EFI/Linux")? {
        out.push_str(&format!("esp: {name} ({} bytes)\n", bytes.len()));
    }
    Ok(out)
}
