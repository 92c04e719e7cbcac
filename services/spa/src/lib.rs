//! The SPA gate: fwknop-compatible single packet authorization on udp/62201;
//! a valid knock adds `source . proto . port` to the nftables set `spa_v4`/`spa_v6`
//! of table `inet gwos` (owned by gwos-netfilter) for a few seconds. Started by
//! init as `gwosd run spa`; control manages users over `spa.sock`; every
//! decision leaves as an event line. `client` is the `gwos knock` encoder.

#![forbid(unsafe_code)]

pub mod client;
pub mod crypto;
pub mod keyfile;
pub mod packet;
pub mod ratelimit;
pub mod replay;
pub mod service;
pub mod users;

#[cfg(test)]
mod vectors_test;

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    service::run(ctx)
}
