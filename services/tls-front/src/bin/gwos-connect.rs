//! Development front end of `gwos connect`: the same options
//! (`gwos_tls_front::client::ConnectArgs`), the same code.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Carry a local WireGuard client's datagrams over TLS 1.3 to a gwos gateway")]
struct Args {
    #[command(flatten)]
    connect: gwos_tls_front::client::ConnectArgs,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let opts = gwos_tls_front::client::ConnectOptions::from_args(a.connect)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(gwos_tls_front::client::run_connect(opts))
}
