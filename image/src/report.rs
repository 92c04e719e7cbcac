//! `out/build-report.json`: sizes, root hash, versions, build id, and an SBOM
//! (SPDX 2.3 JSON) listing the crates compiled into gwosd (from `cargo
//! metadata`, normal dependencies of `gwos-init`) and the Debian packages the
//! image is made from (versions from dpkg-query).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::tools;

pub const DEBIAN_PACKAGES: &[&str] = &["linux-source-6.1", "systemd-boot-efi", "erofs-utils"];

pub fn dpkg_version(pkg: &str) -> Option<String> {
    let out = tools::run_s("dpkg-query", &["-W", "-f", "${Version}", pkg]).ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

/// (name, version, source) of every crate linked into `root_pkg`.
pub fn crates_of(
    workspace: &Path,
    root_pkg: &str,
) -> Result<Vec<(String, String, String, String)>> {
    let manifest = workspace.join("Cargo.toml");
    let m = manifest.display().to_string();
    let out = tools::run_s(
        "cargo",
        &[
            "metadata",
            "--format-version",
            "1",
            "--manifest-path",
            &m,
            "--filter-platform",
            "x86_64-unknown-linux-gnu",
        ],
    )?;
    let v: Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    let pkgs: BTreeMap<&str, &Value> = v["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &Value> = v["resolve"]["nodes"]
        .as_array()
        .context("resolve")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = pkgs
        .iter()
        .find(|(_, p)| p["name"] == root_pkg)
        .map(|(id, _)| *id)
        .with_context(|| format!("package {root_pkg} not in workspace"))?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for d in nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten()
        {
            let normal = d["dep_kinds"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()));
            if normal {
                if let Some(p) = d["pkg"].as_str() {
                    stack.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    for id in seen {
        let p = pkgs[id];
        out.push((
            p["name"].as_str().unwrap_or("").to_string(),
            p["version"].as_str().unwrap_or("").to_string(),
            p["source"].as_str().unwrap_or("workspace").to_string(),
            p["license"].as_str().unwrap_or("NOASSERTION").to_string(),
        ));
    }
    out.sort();
    Ok(out)
}

fn spdx_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

pub fn sbom(
    build_id: &str,
    epoch: u64,
    crates: &[(String, String, String, String)],
    debs: &[(String, String)],
) -> Value {
    let (y, mo, d, h, mi, s) = crate::esp::civil(epoch);
    let mut packages = vec![json!({
        "name": "gwos-image", "SPDXID": "SPDXRef-gwos-image", "versionInfo": build_id,
        "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION"
    })];
    let mut rels = vec![
        json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-gwos-image"}),
    ];
    for (name, ver, src, lic) in crates {
        let id = format!("SPDXRef-crate-{}-{}", spdx_id(name), spdx_id(ver));
        let from_registry = src.starts_with("registry+");
        let mut p = json!({
            "name": name, "SPDXID": id, "versionInfo": ver,
            "downloadLocation": if from_registry { format!("https://crates.io/crates/{name}/{ver}") } else { "NOASSERTION".into() },
            "filesAnalyzed": false, "licenseConcluded": "NOASSERTION", "licenseDeclared": lic, "copyrightText": "NOASSERTION",
        });
        if from_registry {
            p["externalRefs"] = json!([{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": format!("pkg:cargo/{name}@{ver}")}]);
        }
        packages.push(p);
        rels.push(json!({"spdxElementId": "SPDXRef-gwos-image", "relationshipType": "CONTAINS", "relatedSpdxElement": id}));
    }
    for (name, ver) in debs {
        let id = format!("SPDXRef-deb-{}", spdx_id(name));
        packages.push(json!({
            "name": name, "SPDXID": id, "versionInfo": ver, "downloadLocation": "NOASSERTION", "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": format!("pkg:deb/debian/{name}@{ver}?distro=debian-12")}]
        }));
        rels.push(json!({"spdxElementId": "SPDXRef-gwos-image", "relationshipType": "GENERATED_FROM", "relatedSpdxElement": id}));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("gwos-{build_id}"),
        "documentNamespace": format!("https://gwos.invalid/spdx/{build_id}"),
        "creationInfo": {
            "created": format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
            "creators": [format!("Tool: gwos-{}", env!("CARGO_PKG_VERSION"))]
        },
        "packages": packages,
        "relationships": rels,
    })
}

/// The `inputs` section of the build report: the sha256 of every input that
/// reaches the image's bytes, each named, so that two reports can be diffed
/// to find the one input that differs (docs/build.md, "Reproducibility").
pub struct Inputs<'a> {
    pub kernel: &'a Path,
    pub gwosd: &'a Path,
    pub rootfs_dir: &'a Path,
    pub site_toml: &'a str,
    pub release_keys: &'a [(String, String)],
    pub efi_files: &'a [&'a str],
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

fn file_sha256(p: &Path) -> Result<String> {
    let b = std::fs::read(p)
        .with_context(|| format!("reading {} for the build report", p.display()))?;
    Ok(sha256_hex(&b))
}

pub fn inputs(i: &Inputs) -> Result<Value> {
    let mut rootfs = BTreeMap::new();
    if i.rootfs_dir.exists() {
        for (rel, m) in crate::rootfs::walk(i.rootfs_dir)? {
            if m.is_file() {
                rootfs.insert(rel.clone(), file_sha256(&i.rootfs_dir.join(&rel))?);
            } else if m.file_type().is_symlink() {
                let t = std::fs::read_link(i.rootfs_dir.join(&rel))?;
                rootfs.insert(rel.clone(), format!("symlink:{}", t.display()));
            }
        }
    }
    let mut efi = BTreeMap::new();
    for f in i.efi_files {
        efi.insert(f.to_string(), file_sha256(Path::new(f))?);
    }
    let keys: BTreeMap<&str, String> = i
        .release_keys
        .iter()
        .map(|(name, text)| (name.as_str(), sha256_hex(text.as_bytes())))
        .collect();
    Ok(json!({
        "kernel_sha256": file_sha256(i.kernel)?,
        "gwosd_sha256": file_sha256(i.gwosd)?,
        "site_toml_sha256": sha256_hex(i.site_toml.as_bytes()),
        "rootfs": rootfs,
        "release_public_keys": keys,
        "efi": efi,
        "debian_packages": DEBIAN_PACKAGES.iter().map(|p| (p.to_string(), dpkg_version(p).unwrap_or_else(|| "NOASSERTION".into()))).collect::<BTreeMap<_, _>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_name_every_rootfs_file_and_key() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc/gwos")).unwrap();
        std::fs::write(root.join("etc/gwos/sysctl.conf"), b"a=1\n").unwrap();
        std::fs::write(d.path().join("k"), b"kernel").unwrap();
        std::fs::write(d.path().join("g"), b"gwosd").unwrap();
        let keys = vec![("00aa.pub".to_string(), "ed25519 AAAA".to_string())];
        let v = inputs(&Inputs {
            kernel: &d.path().join("k"),
            gwosd: &d.path().join("g"),
            rootfs_dir: &root,
            site_toml: "x = 1\n",
            release_keys: &keys,
            efi_files: &[],
        })
        .unwrap();
        assert_eq!(v["kernel_sha256"], sha256_hex(b"kernel"));
        assert_eq!(v["rootfs"]["etc/gwos/sysctl.conf"], sha256_hex(b"a=1\n"));
        assert_eq!(
            v["release_public_keys"]["00aa.pub"],
            sha256_hex(b"ed25519 AAAA")
        );
    }
}
