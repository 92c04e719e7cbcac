//! Boot blessing (systemd-boot boot counting): when every service is
//! healthy, the UKI this boot came from (`LoaderBootCountPath` efivar, e.g.
//! `\EFI\Linux\gwos-0.1.0-a+2-1.efi`) is renamed without its `+N[-M]`
//! counter on the ESP, so systemd-boot treats the entry as good.

use anyhow::{bail, Context, Result};

const VAR: &str =
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const ESP_MNT: &str = "/run/gwos-esp";

/// efivar content: 4 bytes attributes, then a NUL-terminated UTF-16LE string.
pub fn decode_efivar_string(raw: &[u8]) -> Option<String> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// `gwos-0.1.0-a+2-1.efi` → `gwos-0.1.0-a.efi`; None when there is no counter.
pub fn blessed_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".efi")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let ok = counter.split('-').count() <= 2
        && counter
            .split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| format!("{base}.efi"))
}

/// Returns what was done, for the console.
pub fn bless(esp: Option<&crate::gpt_find::Part>) -> Result<String> {
    if !std::path::Path::new("/sys/firmware/efi").exists() {
        return Ok("not an EFI boot: nothing to bless".into());
    }
    let raw = match std::fs::read(VAR) {
        Ok(r) => r,
        Err(_) => {
            return Ok(
                "no LoaderBootCountPath: not a counted (trial) boot, nothing to bless".into(),
            )
        }
    };
    let path = decode_efivar_string(&raw).context("LoaderBootCountPath is not UTF-16")?;
    let rel = path.trim_start_matches('\\').replace('\\', "/");
    if rel.contains("..") {
        bail!("LoaderBootCountPath {path:?} is not a plain path");
    }
    let (dir, file) = rel
        .rsplit_once('/')
        .context("LoaderBootCountPath has no directory")?;
    let new = blessed_name(file).with_context(|| format!("{file} has no boot counter"))?;
    let esp = esp.context("no partition labelled esp")?;
    crate::mounts::fs(
        &esp.dev_path(),
        ESP_MNT,
        "vfat",
        crate::mounts::SAFE,
        Some("umask=0077"),
    )?;
    let res = (|| -> Result<()> {
        let d = format!("{ESP_MNT}/{dir}");
        std::fs::rename(format!("{d}/{file}"), format!("{d}/{new}"))
            .with_context(|| format!("renaming {file} to {new}"))?;
        std::fs::File::open(&d)?.sync_all()?;
        Ok(())
    })();
    nix::unistd::sync();
    let _ = nix::mount::umount2(ESP_MNT, nix::mount::MntFlags::empty());
    res.map(|_| format!("blessed {file} -> {new}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            blessed_name("gwos-0.1.0-a+3.efi").as_deref(),
            Some("gwos-0.1.0-a.efi")
        );
        assert_eq!(
            blessed_name("gwos-0.1.0-a+2-1.efi").as_deref(),
            Some("gwos-0.1.0-a.efi")
        );
        assert_eq!(blessed_name("gwos-0.1.0-a.efi"), None);
        assert_eq!(blessed_name("gwos+x.efi"), None);
    }

    #[test]
    fn efivar_string() {
        let mut raw = vec![7, 0, 0, 0];
        for u in "\\EFI\\Linux\\a+1.efi".encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_efivar_string(&raw).as_deref(),
            Some("\\EFI\\Linux\\a+1.efi")
        );
    }
}
