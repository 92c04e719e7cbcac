//! The vpn's local RPC: `vpn_user_create`, `vpn_user_delete`, `update_ccd`,
//! `vpn_user_renew`, `vpn_user_config`, `set_dns`, `vpn_user_list`,
//! `vpn_status`, `health`. Every change is persisted to `users.json`
//! atomically, then applied to the firewall and the data plane.
//!
//! Grants: a user may carry an expiry (`expires_secs` at create or renew,
//! within the site's `[vpn] grant_default_secs`/`grant_max_secs`). [`Service::expire`]
//! runs every second and at start: an expired user is removed exactly as
//! `vpn_user_delete` removes one (session cut, rules gone) and `vpn.grant_expired`
//! is emitted. DNS: the resolvers (`set_dns`, else the site's) go into every
//! client config and every user's allowed destinations; DNS elsewhere is dropped.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Value};

use gwos_core::rpc::{Peer, Request, Response};

use crate::engine::Engine;
use crate::users::{self, User, Users};
use crate::VpnConfig;

pub struct Service {
    pub cfg: VpnConfig,
    pub pool: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub server_public: String,
    pub users_path: PathBuf,
    pub users: Mutex<Users>,
    pub engine: Arc<Engine>,
    pub name: String,
    /// The site's `[vpn] dns`, parsed (a runtime `set_dns` overrides it).
    pub site_dns: Vec<Ipv4Addr>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub allowed: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    name: String,
    public_key: String,
    #[serde(default)]
    address: Option<Ipv4Addr>,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    expires_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewReq {
    name: String,
    expires_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsReq {
    /// `None`: back to the site's `[vpn] dns`.
    dns: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameReq {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CcdReq {
    name: String,
    policy: Policy,
}

impl Service {
    pub fn handle(&self, req: Request, peer: Peer) -> Response {
        let method = req.method.clone();
        let result = match method.as_str() {
            "health" => Ok(
                json!({"healthy": true, "status": "ok", "users": self.lock().users.len(), "public_key": self.server_public}),
            ),
            "vpn_user_create" => self.create(req.params),
            "vpn_user_delete" => self.delete(req.params),
            "update_ccd" => self.update_ccd(req.params),
            "vpn_user_renew" => self.renew(req.params),
            "vpn_user_config" => self.config_again(req.params),
            "set_dns" => self.set_dns(req.params),
            "vpn_user_list" | "vpn_status" => Ok(self.status()),
            other => Err(anyhow::anyhow!("unknown method {other:?}")),
        };
        if method != "health" && method != "vpn_status" && method != "vpn_user_list" {
            gwos_core::emit(
                &gwos_core::Event::new(&self.name, "vpn.rpc")
                    .field("method", method.clone())
                    .field("caller_uid", peer.uid)
                    .field("ok", result.is_ok())
                    .field("trace_id", req.trace_id.clone().unwrap_or_default()),
            );
        }
        match result {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resolvers in force: the runtime ones, else the site's.
    pub fn dns(&self, users: &Users) -> Vec<Ipv4Addr> {
        users.dns.clone().unwrap_or_else(|| self.site_dns.clone())
    }

    /// The user as the data plane sees it: allowed networks plus resolvers.
    fn engine_user(&self, user: &User, dns: &[Ipv4Addr]) -> User {
        let mut u = user.clone();
        u.allowed = users::effective_allowed(user, dns);
        u
    }

    /// Loads every user and the resolvers into the data plane.
    pub fn load_engine(&self) -> Result<()> {
        let all = self.lock().clone();
        let dns = self.dns(&all);
        self.engine.set_dns(&dns);
        for u in all.users.values() {
            self.engine.upsert(&self.engine_user(u, &dns))?;
        }
        Ok(())
    }

    pub fn apply_firewall(&self) -> Result<()> {
        if !self.cfg.nftables {
            return Ok(());
        }
        let all = self.lock().clone();
        let dns = self.dns(&all);
        let rules: Vec<_> = all
            .users
            .values()
            .map(|u| gwos_netfilter::vpn::UserRule {
                address: u.address,
                allowed: users::effective_allowed(u, &dns),
            })
            .collect();
        gwos_netfilter::vpn::apply(&self.cfg.interface, self.pool, &rules, &dns)
            .context("programming the vpn firewall rules")
    }

    /// Removes every user whose grant has ended by `now` (at start and every
    /// second): persisted first, then the session and the rules go.
    pub fn expire(&self, now: u64) -> Result<Vec<String>> {
        let gone: Vec<User> = {
            let mut all = self.lock();
            let names = all.expired(now);
            if names.is_empty() {
                return Ok(vec![]);
            }
            let mut next = all.clone();
            let gone = names.iter().filter_map(|n| next.users.remove(n)).collect();
            self.save(&next)?;
            *all = next;
            gone
        };
        for u in &gone {
            if let Ok(k) = users::parse_key(&u.public_key) {
                self.engine.remove_key(&k);
            }
        }
        self.apply_firewall()?;
        for u in &gone {
            gwos_core::emit(
                &gwos_core::Event::new(&self.name, "vpn.grant_expired")
                    .field("user", u.name.clone())
                    .field("address", u.address.to_string())
                    .field("expired_at", rfc3339(u.expires_at.unwrap_or(now))),
            );
        }
        Ok(gone.into_iter().map(|u| u.name).collect())
    }

    fn status(&self) -> Value {
        let all = self.lock().clone();
        let mut peers = self.engine.status();
        for p in &mut peers {
            let Some(u) = p["name"].as_str().and_then(|n| all.users.get(n)) else {
                continue;
            };
            p["expires_at"] = u.expires_at.map(rfc3339).into();
            p["config_outdated"] = (u.config_dns != self.dns(&all)).into();
        }
        json!({
            "gateway": self.gateway.to_string(),
            "dns": self.dns(&all).iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "dns_dropped": self.engine.dns_dropped(),
            "users": peers,
        })
    }

    fn save(&self, users: &Users) -> Result<()> {
        gwos_core::state::write_json(&self.users_path, users)
    }

    fn create(&self, params: Value) -> Result<Value> {
        let r: CreateReq = serde_json::from_value(params).context("vpn_user_create parameters")?;
        if !users::valid_name(&r.name) {
            bail!("invalid user name");
        }
        let key = users::parse_key(&r.public_key)?;
        let allowed = match r.policy {
            Some(p) => users::parse_nets(&p.allowed)?,
            None => users::parse_nets(&self.cfg.default_allowed)?,
        };
        let expires_at = users::grant_end(
            unix_now(),
            r.expires_secs,
            self.cfg.grant_default_secs,
            self.cfg.grant_max_secs,
        )?;
        let (user, dns) = {
            let mut all = self.lock();
            if all.users.contains_key(&r.name) {
                bail!("user {} already exists", r.name);
            }
            if all.by_key(&key).is_some() {
                bail!("public key already belongs to another user");
            }
            let address = all.allocate(self.pool, self.gateway, r.address)?;
            let user = User {
                name: r.name.clone(),
                public_key: r.public_key.trim().to_string(),
                address,
                allowed,
                created: gwos_core::event::now_rfc3339(),
                expires_at,
                config_dns: self.dns(&all),
            };
            let mut next = all.clone();
            next.users.insert(user.name.clone(), user.clone());
            self.save(&next)?;
            let dns = self.dns(&next);
            *all = next;
            (user, dns)
        };
        self.engine.upsert(&self.engine_user(&user, &dns))?;
        self.apply_firewall()?;
        Ok(self.user_answer(&user, &dns))
    }

    fn renew(&self, params: Value) -> Result<Value> {
        let r: RenewReq = serde_json::from_value(params).context("vpn_user_renew parameters")?;
        let end = users::grant_end(
            unix_now(),
            Some(r.expires_secs),
            None,
            self.cfg.grant_max_secs,
        )?;
        let mut all = self.lock();
        let mut next = all.clone();
        let u = next
            .users
            .get_mut(&r.name)
            .with_context(|| format!("no user {}", r.name))?;
        u.expires_at = end;
        self.save(&next)?;
        *all = next;
        Ok(json!({"name": r.name, "expires_at": end.map(rfc3339)}))
    }

    /// The user's client config again (after a DNS change, say).
    fn config_again(&self, params: Value) -> Result<Value> {
        let r: NameReq = serde_json::from_value(params).context("vpn_user_config parameters")?;
        let mut all = self.lock();
        let dns = self.dns(&all);
        let mut next = all.clone();
        let u = next
            .users
            .get_mut(&r.name)
            .with_context(|| format!("no user {}", r.name))?;
        u.config_dns = dns.clone();
        let user = u.clone();
        self.save(&next)?;
        *all = next;
        Ok(self.user_answer(&user, &dns))
    }

    /// New resolvers for everyone, at once: data plane, rules, and each
    /// user's config is then outdated until fetched again.
    fn set_dns(&self, params: Value) -> Result<Value> {
        let r: DnsReq = serde_json::from_value(params).context("set_dns parameters")?;
        let runtime = r.dns.as_deref().map(users::parse_dns).transpose()?;
        let dns = runtime.clone().unwrap_or_else(|| self.site_dns.clone());
        let outdated: Vec<String> = {
            let mut all = self.lock();
            let mut next = all.clone();
            next.dns = runtime;
            self.save(&next)?;
            *all = next;
            all.users
                .values()
                .filter(|u| u.config_dns != dns)
                .map(|u| u.name.clone())
                .collect()
        };
        self.load_engine()?;
        self.apply_firewall()?;
        Ok(json!({
            "dns": dns.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "configs_outdated": outdated,
            "note": "clients must fetch their config again (vpn_user_config) to use the new resolvers",
        }))
    }

    fn user_answer(&self, user: &User, dns: &[Ipv4Addr]) -> Value {
        let mut allowed_ips = vec![format!("{}/32", self.gateway)];
        allowed_ips.extend(
            users::effective_allowed(user, dns)
                .iter()
                .map(|n| n.to_string()),
        );
        let dns: Vec<String> = dns.iter().map(|a| a.to_string()).collect();
        let endpoint = self.cfg.endpoints.first().cloned().unwrap_or_default();
        json!({
            "name": user.name,
            "gateway_public_key": self.server_public,
            "gateway_address": self.gateway.to_string(),
            "endpoints": self.cfg.endpoints,
            "address": format!("{}/32", user.address),
            "allowed_ips": allowed_ips,
            "dns": dns,
            "expires_at": user.expires_at.map(rfc3339),
            "client_config": users::client_config(user, 32, &self.server_public, &endpoint, &dns, &allowed_ips),
        })
    }

    fn delete(&self, params: Value) -> Result<Value> {
        let r: NameReq = serde_json::from_value(params).context("vpn_user_delete parameters")?;
        let user = {
            let mut all = self.lock();
            let mut next = all.clone();
            let user = next
                .users
                .remove(&r.name)
                .with_context(|| format!("no user {}", r.name))?;
            self.save(&next)?;
            *all = next;
            user
        };
        self.engine.remove_key(&users::parse_key(&user.public_key)?);
        self.apply_firewall()?;
        Ok(json!({"deleted": user.name, "address": user.address.to_string()}))
    }

    fn update_ccd(&self, params: Value) -> Result<Value> {
        let r: CcdReq = serde_json::from_value(params).context("update_ccd parameters")?;
        let allowed = users::parse_nets(&r.policy.allowed)?;
        let user = {
            let mut all = self.lock();
            let mut next = all.clone();
            let u = next
                .users
                .get_mut(&r.name)
                .with_context(|| format!("no user {}", r.name))?;
            u.allowed = allowed;
            let user = u.clone();
            self.save(&next)?;
            *all = next;
            user
        };
        let dns = self.dns(&self.lock());
        self.engine.upsert(&self.engine_user(&user, &dns))?;
        self.apply_firewall()?;
        Ok(self.user_answer(&user, &dns))
    }
}
