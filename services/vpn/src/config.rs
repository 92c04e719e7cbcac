//! The `[vpn]` section of the site config.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnConfig {
    /// Local UDP socket tls-front feeds (`127.0.0.1:51820`).
    pub listen: String,
    /// Optional public UDP socket (SPA-gated by the firewall), e.g. `0.0.0.0:51820`.
    pub public_listen: Option<String>,
    /// TUN interface name.
    pub interface: String,
    /// Address pool; the gateway takes the first host address.
    pub pool: String,
    pub mtu: u32,
    /// Seconds without traffic before a peer's session is dropped.
    pub idle_timeout_secs: u64,
    /// Endpoints written into client configs (host:port), e.g. the `gwos connect`
    /// local port and/or the public UDP endpoint.
    pub endpoints: Vec<String>,
    /// DNS resolvers pushed in the client config (`DNS =`) and added to every
    /// user's allowed destinations; DNS (udp/tcp 53, DoT 853) from the tunnel
    /// to any other address is dropped. `config_set dns` overrides this.
    pub dns: Vec<String>,
    /// Grant length when `vpn_user_create` names none (`None`: no expiry).
    pub grant_default_secs: Option<u64>,
    /// Longest grant `vpn_user_create`/`vpn_user_renew` accept.
    pub grant_max_secs: Option<u64>,
    /// Networks a user may reach when created without a policy.
    pub default_allowed: Vec<String>,
    /// Uid of the control service (allowed to call the RPC besides root).
    pub control_uid: u32,
    /// Program the nftables per-user forward rules.
    pub nftables: bool,
}

impl Default for VpnConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:51820".into(),
            public_listen: None,
            interface: "gw0".into(),
            pool: "10.77.0.0/24".into(),
            mtu: 1380,
            idle_timeout_secs: 900,
            endpoints: vec!["127.0.0.1:51821".into()],
            dns: vec![],
            grant_default_secs: None,
            grant_max_secs: Some(30 * 24 * 3600),
            default_allowed: vec![],
            control_uid: gwos_core::rpc::CONTROL_UID,
            nftables: true,
        }
    }
}
