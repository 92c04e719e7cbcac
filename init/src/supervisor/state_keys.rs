//! The machine secret behind sealed state ([`gwos_core::sealed`]) and the
//! per-service keys PID 1 derives from it before any service starts.
//!
//! Where the secret lives decides what an offline disk edit can do:
//! - EFI variable `GwosStateSecret-d3e9475a-…` (efivarfs mounted): the
//!   firmware's NVRAM (a VM's vars file, a box's flash) is not on the disk,
//!   so a disk edited or copied elsewhere cannot be sealed again; PID 1
//!   makes the variable's file 0600 so services cannot read it through /sys.
//! - otherwise `/var/lib/gwos-pid1/machine-secret` (root, 0600) on the state
//!   partition, with a loud warning: whoever can read the disk can then
//!   recompute every MAC, so offline edits are NOT detected.
//!
//! Each service gets `/run/gwos/keys/<name>.key` (tmpfs, 0400, its own uid):
//! HMAC-SHA256(secret, "gwos-state-v1/<name>"), never the secret itself.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gwos_core::sealed::{self, SealKey};
use nix::fcntl::OFlag;

use super::table::Service;
use crate::state;

pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Our own vendor GUID: a non-standard GUID keeps the variable removable
/// (efivarfs marks only well-known ones immutable).
pub const EFI_VAR: &str = "GwosStateSecret-d3e9475a-5216-4c07-916e-cddcba5a910f";
/// EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const EFI_ATTRS: u32 = 0x7;

/// Where the machine secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Efi(PathBuf),
    /// On the state partition; the reason there is no EFI variable.
    StatePartition {
        path: PathBuf,
        why: String,
    },
}

/// The machine secret: from the EFI variable (made on first boot) when
/// efivarfs is there, else from the state partition.
pub fn machine_secret(efivars: &Path, var: &Path) -> Result<([u8; 32], Source)> {
    let why = if efivars.is_dir() {
        match efi_secret(&efivars.join(EFI_VAR)) {
            Ok(s) => return Ok((s, Source::Efi(efivars.join(EFI_VAR)))),
            Err(e) => format!("{e:#}"),
        }
    } else {
        format!("no EFI variables ({} absent)", efivars.display())
    };
    let dir = state::secure_dir(var, &["lib", "gwos-pid1"], 0, 0, 0o700)?;
    let path = var.join("lib/gwos-pid1/machine-secret");
    let secret = file_secret(&dir, &path)?;
    Ok((secret, Source::StatePartition { path, why }))
}

fn efi_secret(path: &Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(raw) => {
            restrict(path)?;
            let data = raw.get(4..).unwrap_or_default();
            data.try_into().map_err(|_| {
                anyhow::anyhow!(
                    "{} holds {} bytes of data, not 32; leaving it alone",
                    path.display(),
                    data.len()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = sealed::new_secret();
            let mut raw = EFI_ATTRS.to_le_bytes().to_vec();
            raw.extend_from_slice(&secret);
            // efivarfs takes a variable in one write(2).
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let n = f
                .write(&raw)
                .with_context(|| format!("writing {}", path.display()))?;
            anyhow::ensure!(n == raw.len(), "short write to {}", path.display());
            drop(f);
            restrict(path)?;
            let back = std::fs::read(path)?;
            anyhow::ensure!(
                back.get(4..) == Some(&secret[..]),
                "{} did not read back what was written",
                path.display()
            );
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// efivarfs shows variables 0644: make ours readable by root only.
fn restrict(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode == 0o600,
        "{} stays mode {mode:o}: services could read the secret",
        path.display()
    );
    Ok(())
}

fn file_secret(dir: &std::os::fd::OwnedFd, path: &Path) -> Result<[u8; 32]> {
    match state::openat_file(dir, "machine-secret", OFlag::O_RDONLY, 0) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            buf.try_into().map_err(|b: Vec<u8>| {
                anyhow::anyhow!(
                    "{} holds {} bytes, not 32; remove it to make a new one",
                    path.display(),
                    b.len()
                )
            })
        }
        Err(nix::errno::Errno::ENOENT) => {
            let secret = sealed::new_secret();
            let mut f = state::openat_file(
                dir,
                "machine-secret",
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                0o600,
            )
            .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&secret)?;
            f.sync_all()?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

/// Writes `<run_dir>/keys/<name>.key` for each service (0400, its uid:gid);
/// the keys directory is root 0711 (no listing).
pub fn write_service_keys(secret: &[u8; 32], services: &[Service], run_dir: &Path) -> Result<()> {
    let keys = state::secure_dir(run_dir, &["keys"], 0, 0, 0o711)?;
    for s in services {
        let name = format!("{}.key", s.name);
        let path = sealed::key_path(run_dir, &s.name);
        let _ = nix::unistd::unlinkat(
            Some(std::os::fd::AsRawFd::as_raw_fd(&keys)),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let mut f = state::openat_file(
            &keys,
            &name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o400,
        )
        .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(SealKey::derive(secret, &s.name).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        nix::unistd::fchown(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            Some(nix::unistd::Uid::from_raw(s.uid)),
            Some(nix::unistd::Gid::from_raw(s.gid)),
        )
        .with_context(|| format!("chown {} {}", s.uid, path.display()))?;
    }
    Ok(())
}

/// Boot step: the secret, then every service's key, each said on the console.
pub fn provision(services: &[Service]) -> Result<Source> {
    let (secret, source) = machine_secret(Path::new(EFIVARS), Path::new("/var"))?;
    write_service_keys(&secret, services, Path::new(gwos_core::context::RUN_DIR))?;
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn svc(name: &str, uid: u32) -> Service {
        let t = format!("[[service]]\nname = \"{name}\"\nuid = {uid}\ngid = {uid}\n");
        super::super::table::parse(&t)
            .expect("service parses")
            .service
            .remove(0)
    }

    #[test]
    fn service_keys_are_private_and_derived() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let me = std::fs::metadata(&run).unwrap();
        let secret = [9u8; 32];
        let mut control = svc("control", 804);
        (control.uid, control.gid) = (me.uid(), me.gid()); // chown works without root
        write_service_keys(&secret, &[control.clone()], &run).unwrap();
        // Written again: a stale file is replaced, not reused.
        write_service_keys(&secret, &[control], &run).unwrap();
        let p = sealed::key_path(&run, "control");
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o777, m.uid()), (0o400, me.uid()));
        let k = SealKey::load(&p).unwrap();
        assert_eq!(k.as_bytes(), SealKey::derive(&secret, "control").as_bytes());
        let dm = std::fs::metadata(run.join("keys")).unwrap();
        assert_eq!(dm.mode() & 0o777, 0o711);
    }

    /// Without efivarfs the secret is made once on the state partition and kept.
    #[test]
    fn fallback_secret_on_state_partition_is_stable() {
        let d = tempfile::tempdir().unwrap();
        let var = d.path().join("var");
        std::fs::create_dir(&var).unwrap();
        let efivars = d.path().join("no-efi/efivars");
        let (a, src) = machine_secret(&efivars, &var).unwrap();
        let (b, _) = machine_secret(&efivars, &var).unwrap();
        assert_eq!(a, b);
        let path = var.join("lib/gwos-pid1/machine-secret");
        assert!(
            matches!(&src, Source::StatePartition { path: p, .. } if *p == path),
            "{src:?}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    /// A directory standing in for efivarfs: the variable is made with the
    /// EFI attribute prefix, read back the same on the next boot.
    #[test]
    fn efi_variable_made_once_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let efivars = d.path().join("efi/efivars");
        std::fs::create_dir_all(&efivars).unwrap();
        let var = d.path().join("var");
        std::fs::create_dir(&var).unwrap();
        let (a, src) = machine_secret(&efivars, &var).unwrap();
        assert_eq!(src, Source::Efi(efivars.join(EFI_VAR)));
        let raw = std::fs::read(efivars.join(EFI_VAR)).unwrap();
        assert_eq!((&raw[..4], &raw[4..]), (&7u32.to_le_bytes()[..], &a[..]));
        let (b, _) = machine_secret(&efivars, &var).unwrap();
        assert_eq!(a, b);
        assert!(!var.join("lib/gwos-pid1/machine-secret").exists());
    }
}
