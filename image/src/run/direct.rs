//! `--direct`: the slot A UKI's kernel, initramfs and command line, taken
//! out of the image's ESP, for a `-kernel/-initrd/-append` boot.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{esp, gpt, uki};

pub struct SlotBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// Writes `bzImage` and `initramfs.cpio` of slot A's UKI into `dir`.
pub fn extract_slot_a(image: &Path, dir: &Path) -> Result<SlotBoot> {
    let mut f =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let disk = gpt::read(&mut f).with_context(|| {
        format!(
            "{}: no GPT (--direct needs the raw gwos.img, not gwos.qcow2)",
            image.display()
        )
    })?;
    let p = disk.find("esp")?.clone();
    let mut bytes = vec![0u8; p.size() as usize];
    f.seek(SeekFrom::Start(p.offset()))?;
    f.read_exact(&mut bytes)?;
    let ukis = esp::read_files(bytes, "EFI/Linux").context("esp")?;
    let Some((name, uki_bytes)) = ukis.iter().find(|(n, _)| {
        n.rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with("gwos-") && (b.ends_with("-a.efi") || b.contains("-a+")))
    }) else {
        bail!(
            "{}: no slot A UKI (EFI/Linux/gwos-*-a.efi) on the ESP",
            image.display()
        );
    };
    let section = |s: &str| uki::section(uki_bytes, s).with_context(|| name.clone());
    let kernel = dir.join("bzImage");
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&kernel, section(".linux")?)?;
    std::fs::write(&initrd, section(".initrd")?)?;
    let cmdline = String::from_utf8_lossy(section(".cmdline")?)
        .trim_matches(char::from(0))
        .trim()
        .to_string();
    Ok(SlotBoot {
        kernel,
        initrd,
        cmdline,
    })
}
