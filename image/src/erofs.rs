//! The slot's root file system: `mkfs.erofs` (Debian erofs-utils 1.5) over
//! the staging tree with a fixed timestamp, fixed UUID, all files owned by
//! root except the listed [`Owner`]s (per-service secret files), `--ignore-mtime`
//! (else per-file mtime nanoseconds leak into the inode format) and no
//! xattrs, so the same tree gives the same bytes. The image is padded to
//! whole 4096-byte blocks for dm-verity.
//!
//! mkfs.erofs 1.5 has no per-file owner map: it takes owners from the
//! staging tree, or makes all root (`--all-root`). With owners listed, every
//! staged path is chowned to root and then the listed ones to theirs, which
//! needs root; without, `--all-root` as before.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use uuid::Uuid;

use crate::rootfs::Owner;
use crate::tools;

/// Makes the staging tree's owners exactly root plus `owners`.
fn set_owners(staging: &Path, owners: &[Owner]) -> Result<()> {
    // /proc/self belongs to this process's effective uid
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self")?);
    ensure!(
        euid == 0,
        "{} must be owned by uid {} in the image, which needs gwos build to run as root \
         (mkfs.erofs takes owners from the staging tree); run it as root, or leave those \
         secrets out of image.toml (SPA users can be set at run time with spa_user_set)",
        owners[0].rel,
        owners[0].uid
    );
    let chown = |p: &Path, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", p.display()))
    };
    chown(staging, 0, 0)?;
    for (rel, _) in crate::rootfs::walk(staging)? {
        chown(&staging.join(rel), 0, 0)?;
    }
    for o in owners {
        chown(&staging.join(&o.rel), o.uid, o.gid)?;
    }
    Ok(())
}

pub fn mkfs(
    staging: &Path,
    out: &Path,
    epoch: u64,
    uuid: Uuid,
    compression: &str,
    owners: &[Owner],
) -> Result<u64> {
    let _ = std::fs::remove_file(out);
    let t = format!("-T{epoch}");
    let u = format!("-U{uuid}");
    let z = format!("-z{compression}");
    let mut args: Vec<&std::ffi::OsStr> = vec![t.as_ref(), u.as_ref()];
    if owners.is_empty() {
        args.push("--all-root".as_ref());
    } else {
        set_owners(staging, owners)?;
    }
    args.push("--ignore-mtime".as_ref());
    args.push("-x-1".as_ref());
    if !compression.is_empty() {
        args.push(z.as_ref());
    }
    args.push(out.as_os_str());
    args.push(staging.as_os_str());
    tools::run("mkfs.erofs", &args).context("building the EROFS root")?;
    let len = std::fs::metadata(out)?.len();
    ensure!(len > 0, "mkfs.erofs wrote an empty image");
    let padded = len.div_ceil(4096) * 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)?
        .set_len(padded)?;
    Ok(padded)
}

/// Size in bytes of the EROFS image at the start of `dev` (from its superblock).
pub fn image_size(sb_area: &[u8]) -> Result<u64> {
    ensure!(
        sb_area.len() >= 1024 + 40,
        "EROFS superblock area too short"
    );
    let sb = &sb_area[1024..];
    ensure!(
        sb[0..4] == 0xE0F5_E1E2u32.to_le_bytes(),
        "no EROFS superblock (slot empty?)"
    );
    let bits = sb[12] as u32;
    ensure!(
        (9..=16).contains(&bits),
        "EROFS block size 2^{bits} unsupported"
    );
    let blocks = u32::from_le_bytes(sb[36..40].try_into()?) as u64;
    Ok(blocks << bits)
}

/// Extracts an EROFS image into `dir` with `fsck.erofs --extract` (also checks it).
pub fn extract(image: &Path, dir: &Path) -> Result<()> {
    let a = format!("--extract={}", dir.display());
    tools::run("fsck.erofs", &[a.as_ref(), image.as_os_str()]).context("fsck.erofs --extract")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// F9 through the real tools: spa's secrets file is 0400 and owned by
    /// 801 inside the EROFS image, everything else by root.
    #[test]
    fn f9_erofs_records_the_secret_file_owner() {
        let euid = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(euid, 0, "this test chowns to uid 801 and must run as root");
        let t = tempfile::tempdir().unwrap();
        let gwosd = t.path().join("gwosd");
        std::fs::write(&gwosd, b"ELF").unwrap();
        let site = "[spa]\nport = 62201\n\n[[spa.users]]\nuser = \"alice\"\nkey_base64 = \"k\"\nhmac_key_base64 = \"h\"\n";
        let staging = t.path().join("root");
        let owners = crate::rootfs::stage(
            &staging,
            &crate::rootfs::Input {
                gwosd: &gwosd,
                extra_dir: None,
                os_release: "NAME=gwos\n",
                site_toml: site,
                release_keys: &[],
            },
        )
        .unwrap();
        let img = t.path().join("root.erofs");
        mkfs(&staging, &img, 1_700_000_000, Uuid::nil(), "", &owners).unwrap();
        let out = t.path().join("out");
        extract(&img, &out).unwrap();
        let secret = std::fs::metadata(out.join("etc/gwos/secrets/spa.toml")).unwrap();
        assert_eq!(
            (
                secret.uid(),
                secret.gid(),
                secret.permissions().mode() & 0o7777
            ),
            (801, 801, 0o400)
        );
        let site = std::fs::metadata(out.join("etc/gwos/site.toml")).unwrap();
        assert_eq!(
            (site.uid(), site.gid(), site.permissions().mode() & 0o7777),
            (0, 0, 0o644)
        );
        assert_eq!(std::fs::metadata(out.join("sbin/init")).unwrap().uid(), 0);
    }
}
