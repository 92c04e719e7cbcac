//! The service table (`/etc/gwos/services.toml`, from rootfs/): which
//! services run, as whom, with which capabilities, writable paths, limits and
//! order. Adding a service = one `[[service]]` entry.

use std::collections::HashSet;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(default)]
    pub service: Vec<Service>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Capability names (`CAP_NET_ADMIN`): bounding, permitted, effective, ambient.
    #[serde(default)]
    pub caps: Vec<String>,
    /// Paths writable in the service's mount namespace (its state dir is always writable).
    #[serde(default)]
    pub writable: Vec<String>,
    /// Services started before this one (order only: never waits for their health).
    #[serde(default)]
    pub after: Vec<String>,
    /// cgroup v2 memory.max (bytes or "max"; suffixes K, M, G).
    #[serde(default = "d_mem")]
    pub memory_max: String,
    #[serde(default = "d_pids")]
    pub pids_max: u32,
    #[serde(default = "d_weight")]
    pub cpu_weight: u32,
    /// RLIMIT_NOFILE.
    #[serde(default = "d_nofile")]
    pub nofile: u64,
    /// When an exited service is started again.
    #[serde(default)]
    pub restart: Restart,
    /// Whether the ready line and boot blessing wait for this service's health.
    #[serde(default = "d_true")]
    pub required: bool,
}

/// `restart = "always" | "on-failure"` (after an exit 0, an on-failure service stays stopped).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Always,
    OnFailure,
}

fn d_mem() -> String {
    "256M".into()
}
fn d_pids() -> u32 {
    64
}
fn d_weight() -> u32 {
    100
}
fn d_nofile() -> u64 {
    1024
}
fn d_true() -> bool {
    true
}

pub fn parse(text: &str) -> Result<Table> {
    let t: Table = toml::from_str(text)?;
    t.check()?;
    Ok(t)
}

impl Table {
    pub fn check(&self) -> Result<()> {
        let mut names = HashSet::new();
        for s in &self.service {
            if !names.insert(s.name.as_str()) {
                bail!("service {} listed twice", s.name);
            }
            if s.uid == 0 || s.gid == 0 {
                bail!("service {} must not run as root", s.name);
            }
            for c in &s.caps {
                c.parse::<caps::Capability>()
                    .map_err(|_| anyhow::anyhow!("service {}: unknown capability {c}", s.name))?;
            }
            for w in &s.writable {
                if !w.starts_with("/var/") && !w.starts_with("/run/") {
                    bail!(
                        "service {}: writable path {w} must be under /var or /run",
                        s.name
                    );
                }
            }
        }
        self.order().map(|_| ())
    }

    /// Start order: dependencies first (stable, by table order); refuses cycles and unknown names.
    pub fn order(&self) -> Result<Vec<&Service>> {
        let mut done: Vec<&Service> = Vec::new();
        while done.len() < self.service.len() {
            let before = done.len();
            for s in &self.service {
                if done.iter().any(|d| d.name == s.name) {
                    continue;
                }
                for a in &s.after {
                    if !self.service.iter().any(|x| &x.name == a) {
                        bail!("service {} is after unknown service {a}", s.name);
                    }
                }
                if s.after.iter().all(|a| done.iter().any(|d| &d.name == a)) {
                    done.push(s);
                }
            }
            if done.len() == before {
                bail!("service table has a dependency cycle");
            }
        }
        Ok(done)
    }
}

/// "64M" → bytes; "max" stays "max".
pub fn memory_value(s: &str) -> Result<String> {
    if s == "max" {
        return Ok(s.into());
    }
    let (num, mult) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("memory_max {s:?} is not a size"))?;
    Ok((n * mult).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped table parses and runs each gateway service as the uid the
    /// local RPC callers check for (gwos_core::rpc::SERVICE_UIDS), gid = uid.
    #[test]
    fn shipped_table_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/etc/gwos/services.toml"
        ))
        .unwrap();
        let t = parse(&text).unwrap();
        for (name, uid) in gwos_core::rpc::SERVICE_UIDS {
            if *name == "init" {
                continue; // PID 1 itself (init.sock), not a service in the table
            }
            let s = t
                .service
                .iter()
                .find(|s| s.name == *name)
                .unwrap_or_else(|| panic!("{name} not in the shipped table"));
            assert_eq!((s.uid, s.gid), (*uid, *uid), "{name}");
        }
    }

    #[test]
    fn order_and_errors() {
        let t = parse(
            r#"
[[service]]
name = "control"
uid = 804
gid = 804
after = ["vpn"]
[[service]]
name = "vpn"
uid = 802
gid = 802
caps = ["CAP_NET_ADMIN"]
memory_max = "64M"
"#,
        )
        .unwrap();
        let o: Vec<_> = t.order().unwrap().iter().map(|s| s.name.clone()).collect();
        assert_eq!(o, ["vpn", "control"]);
        assert_eq!(memory_value("64M").unwrap(), "67108864");
        parse("[[service]]\nname='x'\nuid=0\ngid=1\n").unwrap_err();
        parse("[[service]]\nname='x'\nuid=1\ngid=1\ncaps=['CAP_BOGUS']\n").unwrap_err();
        parse("[[service]]\nname='x'\nuid=1\ngid=1\nafter=['x']\n").unwrap_err();
        parse("[[service]]\nname='x'\nuid=1\ngid=1\nwritable=['/etc']\n").unwrap_err();
    }
}
