//! `gwos-qemu boot-times <gwos.img> [runs]`: boots copies of the image
//! through OVMF + systemd-boot on an isolated user-mode network, `runs`
//! times (default 3), and prints one line per boot with the guest's own
//! figures (kernel → PID 1, PID 1 → ready line) and the wall time including
//! firmware. Used by benches/boot.sh.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 3 && args[1] == "boot-times" {
        let runs = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(3u32);
        return boot_times(std::path::Path::new(&args[2]), runs);
    }
    anyhow::bail!(
        "usage: gwos-qemu boot-times <gwos.img> [runs]   (to boot an image: gwos run <gwos.img>)"
    )
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
