//! `gwosd`: the one multi-call binary on the gateway.
//!
//! - as `/init` in the initramfs (PID 1): stage 1 (verify the slot, mount the dm-verity root);
//! - as `/sbin/init` (PID 1 in the verified root): stage 2 (mounts, hardening, supervisor);
//! - `gwosd run <service> [--config F] [--state-dir D] [--run-dir D]`: one service.

use std::path::PathBuf;

use gwos_init::{sandbox, services, stage1, stage2};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("run") {
        // PID 1 blocks every signal (it takes them with sigtimedwait) and a
        // child inherits that mask across exec: unblock, or the supervisor's
        // SIGTERM at shutdown would wait out the grace period for SIGKILL.
        if let Err(e) = nix::sys::signal::SigSet::all().thread_unblock() {
            eprintln!("gwosd run: unblocking signals: {e}");
        }
        std::process::exit(
            match sandbox::apply_from_env().and_then(|_| run_service(&args[2..])) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("gwosd run: {e:#}");
                    1
                }
            },
        );
    }
    if nix::unistd::getpid().as_raw() == 1 {
        let t0 = gwos_init::boottime_ms();
        if std::path::Path::new("/init").exists() && std::path::Path::new("/newroot").is_dir() {
            stage1::main(t0);
        }
        let t0 = std::env::var("GWOS_T0_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(t0);
        stage2::main(t0);
    }
    eprintln!(
        "usage: gwosd run <service> [--config F] [--state-dir D] [--run-dir D]  (as PID 1: init)"
    );
    std::process::exit(2);
}

fn run_service(args: &[String]) -> anyhow::Result<()> {
    let name = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("usage: gwosd run <service>"))?;
    let run = services::lookup(name).ok_or_else(|| {
        let known: Vec<_> = services::SERVICES.iter().map(|(n, _)| *n).collect();
        anyhow::anyhow!("unknown service {name:?}; known: {}", known.join(", "))
    })?;
    let (mut config, mut state_dir, mut run_dir) = (None, None, None);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--config" => config = Some(value()?),
            "--state-dir" => state_dir = Some(value()?),
            "--run-dir" => run_dir = Some(value()?),
            other => anyhow::bail!("unknown flag {other:?}"),
        }
    }
    let ctx = gwos_core::ServiceContext::load(name, config.as_deref(), state_dir, run_dir)?;
    run(ctx)
}
