//! Boots on the machines people have (issue 18): a boot matrix over NIC and
//! storage models, no NIC at boot then one hot-added through the monitor,
//! and a two-NIC guest whose site config picks the second NIC by MAC. All
//! direct-kernel boots of the suite's image (the firmware path is covered by
//! boot.rs and gwos_run.rs), QEMU in a namespace with the guest on TAP, real
//! OpenSSH to the control channel, the stock fwknop client for SPA. Needs
//! root, `make image`; run under the heavy lock, one test at a time.

use std::time::{Duration, Instant};

use gwos_image::run::{DiskModel, NetBackend, Nic};
use gwos_qemu_tests::{
    backend_key, build_test_image, copy_image, direct_boot, need_tool, out_dir, qemu::boot_times,
    test_image, NetNs, Qemu,
};

const BOOT: Duration = Duration::from_secs(300);

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gwos-hw")
        .tempdir_in(out_dir())
        .unwrap()
}

fn health_ok(ns: &NetNs, key: &std::path::Path) {
    let (ok, out) = ns.control(key, "10.0.2.100", "health");
    assert!(ok, "control health failed: {out}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["services"]["spa"], "ok", "{v}");
}

/// One direct boot with `nic` as the NIC model and the disk on `disk`: ready
/// line, every PCI network/storage device has a driver, `health` over control.
fn matrix_boot(tag: &str, nic: &str, disk: DiskModel) {
    need_tool("ssh");
    let img = test_image().unwrap();
    let wd = workdir();
    let d = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let ns = NetNs::new(tag, &["10.0.2.2/24", "10.0.2.100/24"]).unwrap();
    let t = Instant::now();
    let mut q = Qemu::start_with(&d, direct_boot(&img, "").unwrap(), Some(&ns), |s| {
        s.nics[0].model = nic.into();
        s.disks[0].model = disk;
    })
    .unwrap();
    let c = q
        .wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    let (k, r) = boot_times(&c).expect("boot figures");
    let pci: Vec<&str> = c.lines().filter(|l| l.contains("gwos: pci")).collect();
    eprintln!("{}", pci.join("\n"));
    assert!(
        c.contains("storage devices; every one has a driver"),
        "a device without a driver:\n{}",
        pci.join("\n")
    );
    assert!(c.contains("network: eth0 10.0.2.15/24 via 10.0.2.2"), "{c}");
    health_ok(&ns, &backend_key(wd.path()).unwrap());
    eprintln!(
        "MATRIX nic={nic} disk={disk:?}: kernel->PID1 {k} ms, PID1->ready {r} ms (guest clock), wall {wall:.1} s"
    );
    q.power_off().unwrap();
}

macro_rules! matrix {
    ($($name:ident: $nic:expr, $disk:expr;)*) => {$(
        #[test]
        fn $name() {
            matrix_boot(&stringify!($name)[7..], $nic, $disk);
        }
    )*};
}

matrix! {
    matrix_nic_virtio: "virtio-net-pci", DiskModel::VirtioBlk;
    matrix_nic_e1000: "e1000", DiskModel::VirtioBlk;
    matrix_nic_e1000e: "e1000e", DiskModel::VirtioBlk;
    matrix_nic_igb: "igb", DiskModel::VirtioBlk;
    matrix_nic_vmxnet3: "vmxnet3", DiskModel::VirtioBlk;
    matrix_nic_rtl8139: "rtl8139", DiskModel::VirtioBlk;
    matrix_disk_virtio_scsi: "virtio-net-pci", DiskModel::VirtioScsi;
    matrix_disk_ahci: "virtio-net-pci", DiskModel::Ahci;
    matrix_disk_nvme: "virtio-net-pci", DiskModel::Nvme;
    matrix_disk_pvscsi: "virtio-net-pci", DiskModel::Pvscsi;
}

/// No NIC at boot: the console lists the PCI devices and says the uplink is
/// missing; the gateway stays up without a ready line; a virtio-net NIC
/// hot-added through the QEMU monitor becomes the uplink, the ready line
/// follows and control answers over it.
#[test]
fn no_nic_stays_up_lists_devices_and_gets_ready_after_hot_add() {
    need_tool("ssh");
    let img = test_image().unwrap();
    let wd = workdir();
    let d = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let ns = NetNs::new("nonic", &["10.0.2.2/24", "10.0.2.100/24"]).unwrap();
    let mut q = Qemu::start_with(&d, direct_boot(&img, "").unwrap(), Some(&ns), |s| {
        s.nics.clear();
        s.hotplug_ports = 1;
    })
    .unwrap();
    let c = q.wait_for("network: no uplink yet", BOOT).unwrap();
    assert!(
        c.contains("gwos: pci: 0 network and ")
            && c.contains("storage devices; every one has a driver"),
        "{c}"
    );
    assert!(
        c.lines()
            .any(|l| l.contains("gwos: pci 0000:") && l.contains("1af4:") && l.contains("storage")),
        "the virtio disk is not listed:\n{c}"
    );
    assert!(
        c.contains("gwos: network: ethernet interfaces: none"),
        "{c}"
    );
    // Services come up meanwhile; PID 1 neither powers off nor claims ready.
    q.wait_for("service control healthy", BOOT).unwrap();
    std::thread::sleep(Duration::from_secs(10));
    assert!(!q.exited(), "QEMU exited:\n{}", q.console_text());
    let c = q.console_text();
    assert!(
        !c.contains("powering off") && !c.contains("FATAL") && !c.contains("gwos: ready"),
        "{c}"
    );
    let mark = c.len();
    let out = q
        .monitor("netdev_add tap,id=hot0,ifname=tap0,script=no,downscript=no")
        .unwrap();
    assert!(out.is_empty(), "netdev_add: {out}");
    let out = q
        .monitor("device_add virtio-net-pci,netdev=hot0,bus=hp0,mac=52:54:00:12:34:56,id=hotnic")
        .unwrap();
    assert!(out.is_empty(), "device_add: {out}");
    let t = Instant::now();
    let c = q
        .wait_for_from(
            mark,
            "gwos: ready slot=A version=0.1.0",
            Duration::from_secs(120),
        )
        .unwrap();
    eprintln!(
        "ready {:.1} s after device_add:\n{}",
        t.elapsed().as_secs_f64(),
        c[mark..]
            .lines()
            .filter(|l| l.contains("gwos:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        c[mark..].contains("network: eth0 10.0.2.15/24 via 10.0.2.2"),
        "{}",
        &c[mark..]
    );
    health_ok(&ns, &backend_key(wd.path()).unwrap());
    q.power_off().unwrap();
}

/// qemu-tests/test-image.toml as JSON (the SPA stanza's keys).
fn test_config() -> serde_json::Value {
    let t =
        std::fs::read_to_string(gwos_qemu_tests::workspace().join("qemu-tests/test-image.toml"))
            .unwrap();
    serde_json::to_value(toml::from_str::<toml::Value>(&t).unwrap()).unwrap()
}

/// Two NICs, the site config names the second by MAC: it is the uplink (SPA
/// knock from fwknop then TLS 1.3 to tcp/443, control `health` from the
/// backend), and the first NIC is left down: not one frame leaves it.
#[test]
fn two_nics_uplink_chosen_by_mac_first_gets_nothing() {
    for t in ["ssh", "fwknop", "openssl"] {
        need_tool(t);
    }
    let img = build_test_image("qemu-test-mac", "mac = \"52:54:00:00:00:02\"").unwrap();
    let wd = workdir();
    let d = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let ns = NetNs::new("mac", &[]).unwrap();
    ns.add_tap("tap1", &["10.0.2.2/24", "10.0.2.100/24", "10.0.2.50/24"])
        .unwrap();
    let mut q = Qemu::start_with(&d, direct_boot(&img, "").unwrap(), Some(&ns), |s| {
        s.nics[0].mac = Some("52:54:00:00:00:01".into());
        s.nics.push(Nic {
            model: "virtio-net-pci".into(),
            mac: Some("52:54:00:00:00:02".into()),
            backend: NetBackend::Tap {
                ifname: "tap1".into(),
            },
        });
    })
    .unwrap();
    let c = q
        .wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();
    let line = c
        .lines()
        .find(|l| l.contains("(uplink "))
        .unwrap_or_else(|| panic!("no network line:\n{c}"));
    eprintln!("{line}");
    assert!(
        line.contains("network: eth1 10.0.2.15/24 via 10.0.2.2 (uplink eth1 52:54:00:00:00:02")
            && line.contains("chosen by mac 52:54:00:00:00:02")
            && line.ends_with("left down: eth0"),
        "{line}"
    );

    // SPA on the second NIC: the stock client knocks from .50, then TLS 1.3 on 443.
    let (ok, out) = ns.sh("ip route replace 10.0.2.15/32 dev tap1 src 10.0.2.50");
    assert!(ok, "{out}");
    let tc = test_config();
    let user = &tc["site"]["spa"]["users"][0];
    let home = wd.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (ok, out) = ns.sh(&format!(
        "HOME={} fwknop --no-rc-file --no-save-args -A tcp/443 -a 10.0.2.50 -D 10.0.2.15 -U alice --key-base64-rijndael {} --key-base64-hmac {} --use-hmac",
        home.display(),
        user["key_base64"].as_str().unwrap(),
        user["hmac_key_base64"].as_str().unwrap()
    ));
    assert!(ok, "fwknop: {out}");
    let t = Instant::now();
    let mut tls = (false, String::new());
    while t.elapsed() < Duration::from_secs(15) && !tls.0 {
        tls = ns.sh("timeout 20 openssl s_client -connect 10.0.2.15:443 -tls1_3 -brief </dev/null");
    }
    assert!(
        tls.0 && tls.1.contains("TLSv1.3"),
        "no TLS 1.3 after the knock on the second NIC:\n{}",
        tls.1
    );
    health_ok(&ns, &backend_key(wd.path()).unwrap());

    let (ok, rx) = ns.sh("cat /sys/class/net/tap0/statistics/rx_packets");
    assert!(ok, "{rx}");
    assert_eq!(rx.trim(), "0", "frames left the first NIC");
    q.power_off().unwrap();
}
