//! The VPN: a WireGuard concentrator on boringtun driving TUN gw0, fed by tls-front over 127.0.0.1:51820.

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    anyhow::bail!("service {} is not implemented yet", ctx.name)
}
