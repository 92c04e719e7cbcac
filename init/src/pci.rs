//! What hardware PID 1 found: every PCI network and storage function, from
//! sysfs (`/sys/bus/pci/devices/*`: vendor, device, class, the bound
//! driver), printed on the console so an operator whose NIC or disk
//! controller has no driver in this kernel sees which one it is.

use std::path::Path;

/// One PCI function of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `0000:00:02.0`
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    /// The 24-bit class code (`0x020000` = ethernet).
    pub class: u32,
    /// The bound driver's name, `None` when no driver claimed it.
    pub driver: Option<String>,
}

impl Device {
    pub fn is_network(&self) -> bool {
        self.class >> 16 == 0x02
    }
    pub fn is_storage(&self) -> bool {
        self.class >> 16 == 0x01
    }
}

/// The class code in words (PCI code and ID assignment spec, base classes 01 and 02).
pub fn class_name(class: u32) -> &'static str {
    match class >> 8 {
        0x0100 => "storage (SCSI)",
        0x0101 => "storage (IDE)",
        0x0104 => "storage (RAID)",
        0x0106 => "storage (SATA)",
        0x0107 => "storage (SAS)",
        0x0108 => "storage (NVMe)",
        0x0200 => "network (ethernet)",
        0x0207 => "network (InfiniBand)",
        c if c >> 8 == 0x01 => "storage (other)",
        c if c >> 8 == 0x02 => "network (other)",
        _ => "other",
    }
}

fn hex_file(dir: &Path, name: &str) -> Option<u32> {
    let t = std::fs::read_to_string(dir.join(name)).ok()?;
    u32::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok()
}

/// Network and storage functions under `root` (normally `/sys/bus/pci/devices`), by address.
pub fn scan(root: &Path) -> Vec<Device> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return vec![];
    };
    let mut out: Vec<Device> = rd
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let d = Device {
                address: e.file_name().to_string_lossy().into_owned(),
                vendor: hex_file(&dir, "vendor")? as u16,
                device: hex_file(&dir, "device")? as u16,
                class: hex_file(&dir, "class")?,
                driver: std::fs::read_link(dir.join("driver"))
                    .ok()
                    .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())),
            };
            (d.is_network() || d.is_storage()).then_some(d)
        })
        .collect();
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// One console line per device, then a summary naming the driverless ones.
pub fn report(devices: &[Device]) -> Vec<String> {
    let mut lines: Vec<String> = devices
        .iter()
        .map(|d| {
            format!(
                "pci {} {:04x}:{:04x} {} {}",
                d.address,
                d.vendor,
                d.device,
                class_name(d.class),
                match &d.driver {
                    Some(n) => format!("driver {n}"),
                    None => "NO DRIVER".into(),
                }
            )
        })
        .collect();
    let nets = devices.iter().filter(|d| d.is_network()).count();
    let disks = devices.iter().filter(|d| d.is_storage()).count();
    let missing: Vec<String> = devices
        .iter()
        .filter(|d| d.driver.is_none())
        .map(|d| format!("{} {:04x}:{:04x}", d.address, d.vendor, d.device))
        .collect();
    lines.push(format!(
        "pci: {nets} network and {disks} storage devices; {}",
        if missing.is_empty() {
            "every one has a driver".to_string()
        } else {
            format!(
                "no driver in this kernel for {} (see docs/kernel.md)",
                missing.join(", ")
            )
        }
    ));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(
        root: &Path,
        addr: &str,
        vendor: &str,
        device: &str,
        class: &str,
        driver: Option<&str>,
    ) {
        let d = root.join(addr);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        std::fs::write(d.join("class"), format!("{class}\n")).unwrap();
        if let Some(n) = driver {
            let drv = root.join("drivers").join(n);
            std::fs::create_dir_all(&drv).unwrap();
            std::os::unix::fs::symlink(&drv, d.join("driver")).unwrap();
        }
    }

    #[test]
    fn lists_network_and_storage_and_names_the_driverless() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("devices");
        fake(&root, "0000:00:03.0", "0x15ad", "0x07b0", "0x020000", None);
        fake(
            &root,
            "0000:00:02.0",
            "0x1af4",
            "0x1001",
            "0x010000",
            Some("virtio-pci"),
        );
        fake(&root, "0000:00:1f.0", "0x8086", "0x2918", "0x060100", None); // ISA bridge: not listed
        let devs = scan(&root);
        assert_eq!(devs.len(), 2, "{devs:?}");
        assert_eq!(
            report(&devs),
            vec![
                "pci 0000:00:02.0 1af4:1001 storage (SCSI) driver virtio-pci".to_string(),
                "pci 0000:00:03.0 15ad:07b0 network (ethernet) NO DRIVER".to_string(),
                "pci: 1 network and 1 storage devices; no driver in this kernel for 0000:00:03.0 15ad:07b0 (see docs/kernel.md)".to_string(),
            ]
        );
    }
}
