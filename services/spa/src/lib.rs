//! The SPA gate: fwknop-compatible single packet authorization on udp/62201; a valid knock adds the source to an nftables set for seconds.

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    anyhow::bail!("service {} is not implemented yet", ctx.name)
}
