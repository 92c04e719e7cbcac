//! The root file system staging tree: `/sbin/init` (gwosd, hard-linked as
//! `/usr/bin/gwosd`), the repository's `rootfs/` files as they are, generated
//! `/etc/os-release` and `/etc/gwos/site.toml`, release public keys, empty
//! mount points. Nothing else: no shell, no interpreter.
//!
//! site.toml is world-readable (every service reads its section), so the
//! secrets in it are split out into per-service files readable only by
//! their owner ([`SECRETS`]): `[spa] users` (the SPA keys) go to
//! `/etc/gwos/secrets/spa.toml`, mode 0400, owned by spa's uid. [`stage`]
//! returns those owners for the EROFS builder, which records them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Mount points and directories every image has (relative to /).
pub const DIRS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "tmp",
    "var",
    "etc",
    "etc/gwos",
    "etc/gwos/release-keys",
    "etc/gwos/secrets",
    "sbin",
    "usr",
    "usr/bin",
];

/// Names that must never be in an image.
const FORBIDDEN: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "busybox", "toybox", "python", "python3", "perl", "lua",
];

pub struct Input<'a> {
    pub gwosd: &'a Path,
    pub extra_dir: Option<&'a Path>,
    pub os_release: &'a str,
    pub site_toml: &'a str,
    /// (file name, contents) under /etc/gwos/release-keys/.
    pub release_keys: &'a [(String, String)],
}

/// A staged path whose owner is not root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Relative to the root.
    pub rel: String,
    pub uid: u32,
    pub gid: u32,
}

/// Site-config keys that are secrets: (section, key, owning service, file).
pub const SECRETS: &[(&str, &str, &str, &str)] =
    &[("spa", "users", "spa", "etc/gwos/secrets/spa.toml")];

/// Moves each [`SECRETS`] key out of `site` into `(file, text, owner)`;
/// the file holds the key at its top level (`[[users]]` for spa).
pub fn split_secrets(site: &mut toml::Table) -> Result<Vec<(Owner, String)>> {
    let mut out = Vec::new();
    for (section, key, service, rel) in SECRETS {
        let Some(table) = site.get_mut(*section).and_then(toml::Value::as_table_mut) else {
            continue;
        };
        let Some(value) = table.remove(*key) else {
            continue;
        };
        let uid = gwos_core::rpc::SERVICE_UIDS
            .iter()
            .find(|(n, _)| n == service)
            .map(|(_, u)| *u)
            .with_context(|| format!("no fixed uid for service {service}"))?;
        let mut file = toml::Table::new();
        file.insert((*key).to_string(), value);
        let text = format!(
            "# [{section}] {key} from image.toml [site], readable only by {service} (uid {uid})\n{}",
            toml::to_string(&file)?
        );
        out.push((
            Owner {
                rel: (*rel).to_string(),
                uid,
                gid: uid,
            },
            text,
        ));
    }
    Ok(out)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Walks `dir` in sorted order: (relative path, metadata).
pub fn walk(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>> {
    fn rec(base: &Path, rel: &str, out: &mut Vec<(String, std::fs::Metadata)>) -> Result<()> {
        let here = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let mut names: Vec<String> = std::fs::read_dir(&here)
            .with_context(|| format!("reading {}", here.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let m = std::fs::symlink_metadata(base.join(&r))?;
            let is_dir = m.is_dir();
            out.push((r.clone(), m));
            if is_dir {
                rec(base, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    rec(dir, "", &mut out)?;
    Ok(out)
}

/// A digest of a directory tree's names, kinds, modes and contents (for the build id).
pub fn tree_digest(dir: &Path) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    if dir.exists() {
        for (rel, m) in walk(dir)? {
            h.update(rel.as_bytes());
            h.update([
                0,
                m.is_dir() as u8,
                (m.permissions().mode() & 0o111 != 0) as u8,
            ]);
            if m.is_file() {
                h.update(Sha256::digest(std::fs::read(dir.join(&rel))?));
            } else if m.file_type().is_symlink() {
                h.update(
                    std::fs::read_link(dir.join(&rel))?
                        .to_string_lossy()
                        .as_bytes(),
                );
            }
        }
    }
    Ok(h.finalize().into())
}

/// Stages the tree; returns the paths that are not owned by root.
pub fn stage(root: &Path, input: &Input) -> Result<Vec<Owner>> {
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("cleaning {}", root.display()))?;
    }
    std::fs::create_dir_all(root)?;
    set_mode(root, 0o755)?;
    for d in DIRS {
        let p = root.join(d);
        std::fs::create_dir_all(&p)?;
        set_mode(&p, 0o755)?;
    }
    if let Some(extra) = input.extra_dir {
        copy_tree(extra, root)?;
    }
    let init = root.join("sbin/init");
    std::fs::copy(input.gwosd, &init)
        .with_context(|| format!("copying gwosd from {}", input.gwosd.display()))?;
    set_mode(&init, 0o755)?;
    std::fs::hard_link(&init, root.join("usr/bin/gwosd"))?;
    write(root, "etc/os-release", input.os_release)?;
    let mut site: toml::Table = input
        .site_toml
        .parse()
        .context("parsing the generated site.toml")?;
    let secrets = split_secrets(&mut site)?;
    if secrets.is_empty() {
        write(root, "etc/gwos/site.toml", input.site_toml)?;
    } else {
        let header: String = input
            .site_toml
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        write(
            root,
            "etc/gwos/site.toml",
            &format!("{header}{}", toml::to_string(&site)?),
        )?;
    }
    let mut owners = Vec::new();
    for (owner, text) in secrets {
        let p = root.join(&owner.rel);
        std::fs::write(&p, text)?;
        set_mode(&p, 0o400)?;
        owners.push(owner);
    }
    for (name, text) in input.release_keys {
        write(root, &format!("etc/gwos/release-keys/{name}"), text)?;
    }
    check_no_shell(root)?;
    Ok(owners)
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    let p = root.join(rel);
    std::fs::write(&p, text)?;
    set_mode(&p, 0o644)
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    for (rel, m) in walk(src)? {
        let (s, d) = (src.join(&rel), dst.join(&rel));
        if m.is_dir() {
            std::fs::create_dir_all(&d)?;
            set_mode(&d, 0o755)?;
        } else if m.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&s)?, &d)?;
        } else if m.is_file() {
            std::fs::copy(&s, &d).with_context(|| format!("copying {}", s.display()))?;
            // Normalize modes so the umask and checkout do not leak into the image.
            set_mode(
                &d,
                if m.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                },
            )?;
        } else {
            bail!(
                "{}: only files, directories and symlinks may be in the rootfs dir",
                s.display()
            );
        }
    }
    Ok(())
}

/// Refuses a tree holding a shell, interpreter or multi-call toolbox.
pub fn check_no_shell(root: &Path) -> Result<()> {
    for (rel, _) in walk(root)? {
        let name = rel.rsplit('/').next().unwrap_or("");
        if FORBIDDEN.contains(&name) {
            bail!("refusing to build an image containing /{rel}: gwos images have no shell or interpreter");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_expected_tree_and_refuses_shell() {
        let t = tempfile::tempdir().unwrap();
        let gwosd = t.path().join("gwosd");
        std::fs::write(&gwosd, b"ELF").unwrap();
        let extra = t.path().join("extra");
        std::fs::create_dir_all(extra.join("etc/gwos")).unwrap();
        std::fs::write(extra.join("etc/gwos/services.toml"), "x").unwrap();
        let keys = vec![("0011.pub".to_string(), "ab\n".to_string())];
        let input = Input {
            gwosd: &gwosd,
            extra_dir: Some(&extra),
            os_release: "NAME=gwos\n",
            site_toml: "",
            release_keys: &keys,
        };
        let root = t.path().join("root");
        stage(&root, &input).unwrap();
        let names: Vec<String> = walk(&root).unwrap().into_iter().map(|x| x.0).collect();
        for want in [
            "sbin/init",
            "usr/bin/gwosd",
            "etc/os-release",
            "etc/gwos/site.toml",
            "etc/gwos/services.toml",
            "etc/gwos/release-keys/0011.pub",
            "proc",
            "tmp",
        ] {
            assert!(
                names.contains(&want.to_string()),
                "{want} missing: {names:?}"
            );
        }
        std::fs::create_dir_all(extra.join("bin")).unwrap();
        std::fs::write(extra.join("bin/sh"), "").unwrap();
        let e = stage(&root, &input).unwrap_err().to_string();
        assert!(e.contains("/bin/sh"), "{e}");
        assert_ne!(
            tree_digest(&extra).unwrap(),
            tree_digest(&t.path().join("none")).unwrap()
        );
    }

    const SITE_WITH_SPA_USERS: &str = "[control]\nbackend = [\"192.0.2.0/24\"]\n\n[spa]\nport = 62201\n\n[[spa.users]]\nuser = \"alice\"\nkey_base64 = \"PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=\"\nhmac_key_base64 = \"YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==\"\n";

    /// F9: site.toml is 0644 and every service reads it; spa's user keys
    /// must not be in it but in a file only spa's uid can read.
    #[test]
    fn f9_site_secrets_not_world_readable() {
        let t = tempfile::tempdir().unwrap();
        let gwosd = t.path().join("gwosd");
        std::fs::write(&gwosd, b"ELF").unwrap();
        let input = Input {
            gwosd: &gwosd,
            extra_dir: None,
            os_release: "NAME=gwos\n",
            site_toml: SITE_WITH_SPA_USERS,
            release_keys: &[],
        };
        let root = t.path().join("root");
        let owners = stage(&root, &input).unwrap();
        assert_eq!(
            owners,
            vec![Owner {
                rel: "etc/gwos/secrets/spa.toml".into(),
                uid: 801,
                gid: 801
            }]
        );
        let site = std::fs::read_to_string(root.join("etc/gwos/site.toml")).unwrap();
        assert!(
            !site.contains("key_base64") && !site.contains("PLJiB9Fh"),
            "SPA keys in the world-readable site.toml:\n{site}"
        );
        assert!(
            site.contains("port = 62201"),
            "the rest of [spa] stays: {site}"
        );
        let secrets = root.join("etc/gwos/secrets/spa.toml");
        let mode = std::fs::metadata(&secrets).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o400, "{}", secrets.display());
        let text = std::fs::read_to_string(&secrets).unwrap();
        assert!(
            text.contains("PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04="),
            "{text}"
        );
    }
}
