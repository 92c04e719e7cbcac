//! Applies an update bundle to a disk image file, the way the update
//! service does on a gateway (benches/update.sh measures it against dd).
//! `apply_image <disk.img> <bundle> <release-keys dir> <state dir> [running slot A|B] [floor]`

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        a.len() >= 5,
        "usage: apply_image <disk.img> <bundle> <keys dir> <state dir> [A|B] [floor]"
    );
    let disk = gwos_update::disk::Disk::from_image(std::path::Path::new(&a[1]))?;
    let keys = gwos_signing::load_dir(std::path::Path::new(&a[3]))?;
    let boot = gwos_update::boot::BootInfo {
        slot: a.get(5).cloned().unwrap_or_else(|| "A".into()),
        // Version 0: any bundle is newer (the bench measures the writer, and
        // applies the image's own v1 bundle).
        version: 0,
        version_id: "running".into(),
        security_floor: a.get(6).map(|f| f.parse()).transpose()?.unwrap_or(0),
        trial: false,
        tries_left: None,
        blessed: true,
        last_bad: None,
        development: false,
    };
    let env = gwos_update::apply::Env {
        disk: &disk,
        keys: &keys,
        boot: &boot,
        spool: PathBuf::from(&a[4]).join("spool"),
    };
    let mut input = std::fs::File::open(&a[2])?;
    let done = gwos_update::apply::apply(&env, &mut input, &mut |l| eprintln!("update: {l}"))?;
    println!("{}", serde_json::to_string(&done)?);
    Ok(())
}
