//! `gwos-qemu run <image>`: boots an image for a person (OVMF + systemd-boot,
//! TCG) with QEMU user networking forwarding udp/62201, tcp/443 and tcp/2222
//! to localhost ports; the serial console is this terminal. Works on a copy
//! of the image unless `--in-place`.

use std::process::Command;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || args[1] != "run" {
        anyhow::bail!("usage: gwos-qemu run <gwos.img> [--in-place]");
    }
    let src = std::path::PathBuf::from(&args[2]);
    let dir = tempfile::tempdir()?;
    let disk = if args.iter().any(|a| a == "--in-place") { src } else { gwos_qemu_tests::copy_image(&src, dir.path())? };
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(gwos_qemu_tests::qemu::OVMF_VARS, &vars)?;
    eprintln!("gwos-qemu: booting {} (OVMF, TCG). Reach it on this host:", disk.display());
    eprintln!("  SPA:      udp localhost:62201   (fwknop -A tcp/443 -D 127.0.0.1 ...)");
    eprintln!("  TLS:      tcp localhost:8443");
    eprintln!("  control:  ssh -p 2222 gwctl@127.0.0.1 health");
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
