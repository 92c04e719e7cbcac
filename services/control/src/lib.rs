//! The SSH control channel on tcp/2222: the only way to configure a gateway; allowlisted JSON commands, scoped keys, audited.

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    anyhow::bail!("service {} is not implemented yet", ctx.name)
}
