//! Finds partitions by GPT label: the kernel exports each partition's label as
//! `PARTNAME=` in `/sys/class/block/<dev>/uevent` (no udev needed).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Kernel name, e.g. `vda3`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

impl Part {
    pub fn dev_path(&self) -> String {
        format!("/dev/{}", self.name)
    }
    pub fn majmin(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// Parses one uevent file: (PARTNAME, DEVNAME, MAJOR, MINOR).
pub fn parse_uevent(text: &str) -> Option<(String, Part)> {
    let (mut label, mut name, mut major, mut minor) = (None, None, None, None);
    for l in text.lines() {
        match l.split_once('=') {
            Some(("PARTNAME", v)) => label = Some(v.to_string()),
            Some(("DEVNAME", v)) => name = Some(v.to_string()),
            Some(("MAJOR", v)) => major = v.parse().ok(),
            Some(("MINOR", v)) => minor = v.parse().ok(),
            _ => {}
        }
    }
    Some((
        label?,
        Part {
            name: name?,
            major: major?,
            minor: minor?,
        },
    ))
}

/// All labelled partitions the kernel knows now.
pub fn scan() -> Vec<(String, Part)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/class/block") {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path().join("uevent")) {
                if let Some(p) = parse_uevent(&t) {
                    out.push(p);
                }
            }
        }
    }
    out.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    out
}

/// Waits up to `timeout` for every label in `labels`. Two disks carrying the
/// same label are refused (an attacker-attached disk must not shadow ours).
pub fn wait_for(labels: &[&str], timeout: Duration) -> anyhow::Result<Vec<Part>> {
    let start = Instant::now();
    loop {
        let all = scan();
        let mut found = Vec::new();
        for l in labels {
            let hits: Vec<&Part> = all.iter().filter(|(n, _)| n == l).map(|(_, p)| p).collect();
            if hits.len() > 1 {
                let names: Vec<_> = hits.iter().map(|p| p.name.as_str()).collect();
                anyhow::bail!(
                    "partition label {l:?} is on more than one device ({}); refusing to guess",
                    names.join(", ")
                );
            }
            if let Some(p) = hits.first() {
                found.push((*p).clone());
            }
        }
        if found.len() == labels.len() {
            return Ok(found);
        }
        if start.elapsed() > timeout {
            let seen: Vec<_> = all.iter().map(|(l, p)| format!("{}={l}", p.name)).collect();
            anyhow::bail!(
                "partitions {labels:?} not found within {}s (seen: [{}])",
                timeout.as_secs(),
                seen.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_uevent() {
        let t = "MAJOR=254\nMINOR=3\nDEVNAME=vda3\nDEVTYPE=partition\nPARTN=3\nPARTNAME=verity-a\n";
        let (l, p) = super::parse_uevent(t).unwrap();
        assert_eq!(l, "verity-a");
        assert_eq!(p.majmin(), "254:3");
        assert!(super::parse_uevent("MAJOR=8\nMINOR=0\nDEVNAME=sda\nDEVTYPE=disk\n").is_none());
    }
}
