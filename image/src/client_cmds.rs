//! Client helpers of the `gwos` CLI: `knock` (SPA, fwknop wire format),
//! `connect` (WireGuard over the TLS front, SPKI-pinned) and `ctl` (the SSH
//! control channel through the system OpenSSH client). The logic lives in the
//! service crates; this file only maps command lines onto it.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// `gwos connect`: its options live with the client code (mTLS client
/// certificate, SPA knock before each connection: see docs/vpn.md).
pub(crate) use gwos_tls_front::client::ConnectArgs as Connect;

#[derive(Args)]
pub(crate) struct Ctl {
    /// Gateway address (host or IP).
    pub host: String,
    /// Command, e.g. health, vpn_user_create (`help` lists what your key may call).
    pub command: String,
    /// Request JSON file; `-` or absent: stdin if it is not a terminal, else `{}`.
    pub request: Option<PathBuf>,
    #[arg(long, default_value_t = 2222)]
    pub port: u16,
    /// ed25519 private key of a control key.
    #[arg(long, short = 'i')]
    pub identity: PathBuf,
    /// known_hosts file that must already hold the gateway's host key.
    /// Without it, the key is pinned on first contact in
    /// ~/.config/gwos/known_hosts and must match afterwards.
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Sign the request as an approval with this second admin key (adds `approval`).
    #[arg(long)]
    pub approve_with: Option<PathBuf>,
    /// Approval validity in seconds.
    #[arg(long, default_value_t = 300)]
    pub approval_secs: i64,
}

pub(crate) fn knock(args: &[String]) -> Result<()> {
    gwos_spa::client::cli(args)
}

pub(crate) fn connect(c: Connect) -> Result<()> {
    let opts = gwos_tls_front::client::ConnectOptions::from_args(c)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(gwos_tls_front::client::run_connect(opts))
}

/// Runs one control command; returns the process exit status (0 ok, 1 refused).
pub(crate) fn ctl(c: Ctl) -> Result<i32> {
    use std::io::IsTerminal;
    let text = match c.request.as_deref() {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        _ if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        }
        _ => String::new(),
    };
    let mut request: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&text).context("request is not JSON")?
    };
    if let Some(approver) = &c.approve_with {
        if request.get("trace_id").is_none() {
            request["trace_id"] = serde_json::Value::String(gwos_core::event::new_trace_id());
        }
        // The approval is bound to the key that sends the request (-i).
        let (_, requester) = gwos_control::client::read_ed25519_identity(&c.identity)?;
        request = gwos_control::client::approve(
            approver,
            &requester,
            &c.command,
            &request,
            c.approval_secs,
        )?;
    }
    use gwos_control::client::HostKeys;
    let host_keys = match c.known_hosts {
        Some(file) => HostKeys::Pinned(file),
        None => HostKeys::FirstUse(gwos_control::client::default_known_hosts()?),
    };
    let target = gwos_control::client::Target {
        host: c.host,
        port: c.port,
        identity: c.identity,
        host_keys: host_keys.clone(),
    };
    let reply = gwos_control::client::call(&target, &c.command, &request)?;
    if let (Some(fp), HostKeys::FirstUse(file)) = (&reply.pinned, &host_keys) {
        eprintln!(
            "gwos ctl: first contact with {}:{}; pinned its host key {fp} in {} \
             (compare it with the gateway's host_key_fingerprint; a different key will be refused)",
            target.host,
            target.port,
            file.display()
        );
    }
    println!("{}", serde_json::to_string_pretty(&reply.response)?);
    Ok(reply.status)
}
