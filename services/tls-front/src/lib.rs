//! The TLS 1.3 front on tcp/443: rustls, carrying length-prefixed WireGuard datagrams to the vpn's local UDP socket.

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    anyhow::bail!("service {} is not implemented yet", ctx.name)
}
