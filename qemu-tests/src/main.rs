//! `gwos-qemu run <image>`: boots an image for a person (OVMF + systemd-boot,
//! TCG) with QEMU user networking forwarding udp/62201, tcp/443 and tcp/2222
//! to localhost ports; the serial console is this terminal. Works on a copy
//! of the image unless `--in-place`.
//!
//! `gwos-qemu boot-times <gwos.img> [runs]`: boots copies of the image
//! through OVMF + systemd-boot on an isolated user-mode network, `runs`
//! times (default 3), and prints one line per boot with the guest's own
//! figures (kernel → PID 1, PID 1 → ready line) and the wall time including
//! firmware. Used by benches/boot.sh.

use std::process::Command;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 3 && args[1] == "boot-times" {
        let runs = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(3u32);
        return boot_times(std::path::Path::new(&args[2]), runs);
    }
    if args.len() < 3 || args[1] != "run" {
        anyhow::bail!(
            "usage: gwos-qemu run <gwos.img> [--in-place] | gwos-qemu boot-times <gwos.img> [runs]"
        );
    }
    let src = std::path::PathBuf::from(&args[2]);
    let dir = tempfile::tempdir()?;
    let disk = if args.iter().any(|a| a == "--in-place") {
        src
    } else {
        gwos_qemu_tests::copy_image(&src, dir.path())?
    };
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(gwos_qemu_tests::qemu::OVMF_VARS, &vars)?;
    eprintln!(
        "gwos-qemu: booting {} (OVMF, TCG). Reach it on this host:",
        disk.display()
    );
    eprintln!("  SPA:      udp localhost:62201   (fwknop -A tcp/443 -D 127.0.0.1 ...)");
    eprintln!("  TLS:      tcp localhost:8443");
    eprintln!("  control:  ssh -i out/keys/dev-control -p 2222 gwctl@127.0.0.1 health   (development image: dev key, host = backend 10.0.2.2)");
    eprintln!("  quit: ctrl-a x");
    let st = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-m", "1024", "-nographic", "-serial", "mon:stdio"])
        .args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={}", gwos_qemu_tests::qemu::OVMF_CODE)])
        .args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", vars.display())])
        .args(["-drive", &format!("file={},format=raw,if=virtio", disk.display())])
        .args(["-netdev", "user,id=n0,net=10.0.2.0/24,hostfwd=udp:127.0.0.1:62201-:62201,hostfwd=tcp:127.0.0.1:8443-:443,hostfwd=tcp:127.0.0.1:2222-:2222"])
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .status()?;
    std::process::exit(st.code().unwrap_or(1));
}

fn boot_times(img: &std::path::Path, runs: u32) -> anyhow::Result<()> {
    use gwos_qemu_tests::{qemu, Boot, Qemu};
    use std::time::{Duration, Instant};
    for i in 1..=runs {
        let dir = tempfile::tempdir()?;
        let disk = gwos_qemu_tests::copy_image(img, dir.path())?;
        let t = Instant::now();
        let mut q = Qemu::start(&disk, Boot::Ovmf, None)?;
        let c = q.wait_for("gwos: ready slot=", Duration::from_secs(300))?;
        let wall = t.elapsed().as_secs_f64();
        let (k, r) = qemu::boot_times(&c)
            .ok_or_else(|| anyhow::anyhow!("no boot figures on the console"))?;
        println!("boot {i}: kernel_to_pid1_ms={k} pid1_to_ready_ms={r} wall_s={wall:.1}");
        q.monitor("system_powerdown")?;
        let _ = q.wait_exit(Duration::from_secs(60));
    }
    Ok(())
}
