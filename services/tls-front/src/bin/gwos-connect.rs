//! Development front end of `gwos connect` (the image's `gwos` CLI calls
//! `gwos_tls_front::client::run_connect` the same way).

use clap::Parser;

#[derive(Parser)]
#[command(about = "Carry a local WireGuard client's datagrams over TLS 1.3 to a gwos gateway")]
struct Args {
    /// Gateway tls-front address, host:port.
    #[arg(long)]
    server: String,
    /// sha256 of the gateway SPKI, hex (tls-front health: spki_sha256).
    #[arg(long)]
    pin: String,
    /// Local UDP address for the WireGuard client's Endpoint.
    #[arg(long, default_value = "127.0.0.1:51821")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "gwos")]
    server_name: String,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(gwos_tls_front::client::run_connect(gwos_tls_front::client::ConnectOptions {
        listen: a.listen,
        server: a.server,
        pin: a.pin,
        server_name: a.server_name,
    }))
}
