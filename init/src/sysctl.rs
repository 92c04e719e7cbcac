//! The sysctl hardening list (`/etc/gwos/sysctl.conf` from rootfs/): written,
//! read back, reported on the console. Fatal on any failure except an
//! optional (`?`) key whose feature the kernel compiled out.

use anyhow::{bail, Context, Result};

#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// `?key`: may be absent when the kernel lacks the feature.
    pub optional: bool,
}

pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("sysctl list line {}: no '='", n + 1))?;
        let (k, optional) = match k.trim().strip_prefix('?') {
            Some(k) => (k.trim(), true),
            None => (k.trim(), false),
        };
        if k.is_empty()
            || !k
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        {
            bail!("sysctl list line {}: bad key {k:?}", n + 1);
        }
        out.push(Entry {
            key: k.into(),
            value: v.trim().into(),
            optional,
        });
    }
    Ok(out)
}

/// Result for one key, as reported on the console.
pub fn apply_one(e: &Entry, proc_sys: &std::path::Path) -> Result<String> {
    let path = proc_sys.join(e.key.replace('.', "/"));
    if !path.exists() {
        if e.optional {
            return Ok(format!("{} absent (feature compiled out)", e.key));
        }
        bail!("sysctl {} does not exist in this kernel", e.key);
    }
    std::fs::write(&path, format!("{}\n", e.value))
        .with_context(|| format!("setting sysctl {}={}", e.key, e.value))?;
    let got =
        std::fs::read_to_string(&path).with_context(|| format!("reading back sysctl {}", e.key))?;
    if got.split_whitespace().collect::<Vec<_>>().join(" ") != e.value {
        bail!(
            "sysctl {} reads back {:?}, wanted {:?}",
            e.key,
            got.trim(),
            e.value
        );
    }
    Ok(format!("{}={}", e.key, e.value))
}

/// Applies every entry; returns the console report lines.
pub fn apply_all(list: &str) -> Result<Vec<String>> {
    let entries = parse(list)?;
    entries
        .iter()
        .map(|e| apply_one(e, std::path::Path::new("/proc/sys")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_shipped_list() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/etc/gwos/sysctl.conf"
        ))
        .unwrap();
        let l = parse(&text).unwrap();
        assert!(l
            .iter()
            .any(|e| e.key == "kernel.kptr_restrict" && e.value == "2" && !e.optional));
        assert!(l
            .iter()
            .any(|e| e.key == "kernel.kexec_load_disabled" && e.optional));
        parse("a b").unwrap_err();
        parse("../x = 1").unwrap_err();
    }

    #[test]
    fn absent_optional_vs_required() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("kernel")).unwrap();
        std::fs::write(d.path().join("kernel/x"), "0\n").unwrap();
        let ok = apply_one(
            &Entry {
                key: "kernel.x".into(),
                value: "2".into(),
                optional: false,
            },
            d.path(),
        )
        .unwrap();
        assert_eq!(ok, "kernel.x=2");
        let opt = apply_one(
            &Entry {
                key: "kernel.y".into(),
                value: "1".into(),
                optional: true,
            },
            d.path(),
        )
        .unwrap();
        assert!(opt.contains("absent (feature compiled out)"));
        apply_one(
            &Entry {
                key: "kernel.y".into(),
                value: "1".into(),
                optional: false,
            },
            d.path(),
        )
        .unwrap_err();
    }
}
