//! The EFI system partition: FAT32 made with mtools (`mformat`, `mmd`,
//! `mcopy`, Debian package mtools) with a fixed volume serial and
//! SOURCE_DATE_EPOCH for every timestamp, so the bytes only depend on the
//! inputs. (The `fatfs` crate 0.3 writes long-name entries in front of `.`
//! and `..`, which fsck.fat rejects, so it is only used here to read.)

use std::io::{Cursor, Read};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use fatfs::{FileSystem, FsOptions};

use crate::tools;

/// Civil date (y, m, d, h, min, s) in UTC for a unix time.
pub fn civil(epoch: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (
        y,
        m,
        d,
        (secs / 3600) as u32,
        (secs % 3600 / 60) as u32,
        (secs % 60) as u32,
    )
}

fn mtool(tool: &str, epoch: u64, args: &[&std::ffi::OsStr]) -> Result<()> {
    let exe = tools::find(tool)?;
    let out = Command::new(&exe)
        .args(args)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Formats a FAT32 volume of `size` bytes and writes `files` (paths with '/').
pub fn build(
    size: u64,
    volume_id: u32,
    epoch: u64,
    files: &[(String, Vec<u8>)],
    work: &Path,
) -> Result<Vec<u8>> {
    let img = work.join("esp.img");
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)?.set_len(size)?;
    let os = |s: &str| std::ffi::OsString::from(s);
    let i = img.as_os_str();
    let sectors = (size / 512).to_string();
    let serial = format!("{volume_id:08x}");
    mtool(
        "mformat",
        epoch,
        &[
            os("-i").as_os_str(),
            i,
            &os("-F"),
            &os("-N"),
            &os(&serial),
            &os("-v"),
            &os("GWOS-ESP"),
            &os("-T"),
            &os(&sectors),
            &os("-h"),
            &os("64"),
            &os("-s"),
            &os("32"),
            &os("::"),
        ],
    )
    .context("formatting the ESP as FAT32 (is esp_mib at least 34?)")?;
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut made = std::collections::BTreeSet::new();
    for (n, (path, data)) in sorted.into_iter().enumerate() {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut acc = String::new();
        for d in &parts[..parts.len().saturating_sub(1)] {
            acc.push('/');
            acc.push_str(d);
            if made.insert(acc.clone()) {
                mtool(
                    "mmd",
                    epoch,
                    &[os("-i").as_os_str(), i, &os(&format!("::{acc}"))],
                )?;
            }
        }
        let src = work.join(format!("esp-file-{n}"));
        std::fs::write(&src, data)?;
        mtool(
            "mcopy",
            epoch,
            &[
                os("-i").as_os_str(),
                i,
                src.as_os_str(),
                &os(&format!("::/{path}")),
            ],
        )
        .with_context(|| format!("ESP: writing {path} (ESP too small?)"))?;
        std::fs::remove_file(&src)?;
    }
    let bytes = std::fs::read(&img)?;
    std::fs::remove_file(&img)?;
    Ok(bytes)
}

/// Lists (path, bytes) of every regular file under `dir` in an ESP image.
pub fn read_files(esp: Vec<u8>, dir: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut img = Cursor::new(esp);
    let fs = FileSystem::new(&mut img, FsOptions::new())
        .context("ESP is not a readable FAT file system")?;
    let d = fs
        .root_dir()
        .open_dir(dir)
        .with_context(|| format!("ESP has no {dir}"))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        if e.is_file() {
            let mut v = Vec::new();
            e.to_file().read_to_end(&mut v)?;
            out.push((format!("{dir}/{}", e.file_name()), v));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn deterministic_fat32_checked_by_fsck_fat() {
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![1u8; 3000]),
            ("loader/loader.conf".to_string(), b"timeout 0\n".to_vec()),
            ("EFI/Linux/gwos-1-a.efi".to_string(), vec![2u8; 70000]),
        ];
        let w = tempfile::tempdir().unwrap();
        let a = build(40 << 20, 0x1234_5678, 1_700_000_000, &files, w.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = build(40 << 20, 0x1234_5678, 1_700_000_000, &files, w.path()).unwrap();
        assert!(a == b, "ESP not deterministic");
        let got = read_files(a.clone(), "EFI/Linux").unwrap();
        assert_eq!(
            got,
            vec![("EFI/Linux/gwos-1-a.efi".to_string(), vec![2u8; 70000])]
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esp.img");
        std::fs::write(&p, &a).unwrap();
        let o = std::process::Command::new("fsck.vfat")
            .args(["-n"])
            .arg(&p)
            .output()
            .expect("dosfstools installed");
        assert!(
            o.status.success(),
            "fsck.vfat: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let o = std::process::Command::new("mdir")
            .args(["-i"])
            .arg(&p)
            .arg("::/loader")
            .output()
            .expect("mtools installed");
        let t = String::from_utf8_lossy(&o.stdout);
        assert!(t.contains("loader") && t.contains("conf"), "{t}");
        assert!(t.contains("2023-11-14") || t.contains("11-14-2023"), "{t}");
    }
}
