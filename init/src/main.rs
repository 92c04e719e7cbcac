//! `gwosd`: the one multi-call binary on the gateway.
//!
//! - as `/init` in the initramfs, or `/sbin/init` as PID 1: init (stages 1 and 2);
//! - `gwosd run <service> [--config F] [--state-dir D] [--run-dir D]`: one service.

use std::path::PathBuf;

mod services;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("run") {
        std::process::exit(match run_service(&args[2..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("gwosd run: {e:#}");
                1
            }
        });
    }
    eprintln!("gwosd: init is not built yet; usage: gwosd run <service> [--config F] [--state-dir D] [--run-dir D]");
    std::process::exit(2);
}

fn run_service(args: &[String]) -> anyhow::Result<()> {
    let name = args.first().ok_or_else(|| anyhow::anyhow!("usage: gwosd run <service>"))?;
    let run = services::lookup(name).ok_or_else(|| {
        let known: Vec<_> = services::SERVICES.iter().map(|(n, _)| *n).collect();
        anyhow::anyhow!("unknown service {name:?}; known: {}", known.join(", "))
    })?;
    let (mut config, mut state_dir, mut run_dir) = (None, None, None);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().map(PathBuf::from).ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
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
