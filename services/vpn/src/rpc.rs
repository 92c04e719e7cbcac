//! The vpn's local RPC: `vpn_user_create`, `vpn_user_delete`, `update_ccd`,
//! `vpn_user_list`, `vpn_status`, `health`. Every change is persisted to
//! `users.json` atomically, then applied to the firewall and the data plane.

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
            "vpn_user_list" | "vpn_status" => {
                Ok(json!({"gateway": self.gateway.to_string(), "users": self.engine.status()}))
            }
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

    pub fn apply_firewall(&self) -> Result<()> {
        if !self.cfg.nftables {
            return Ok(());
        }
        let rules: Vec<_> = self
            .lock()
            .users
            .values()
            .map(|u| gwos_netfilter::vpn::UserRule {
                address: u.address,
                allowed: u.allowed.clone(),
            })
            .collect();
        gwos_netfilter::vpn::apply(&self.cfg.interface, self.pool, &rules)
            .context("programming the vpn firewall rules")
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
        let user = {
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
            };
            let mut next = all.clone();
            next.users.insert(user.name.clone(), user.clone());
            self.save(&next)?;
            *all = next;
            user
        };
        self.engine.upsert(&user)?;
        self.apply_firewall()?;
        Ok(self.user_answer(&user))
    }

    fn user_answer(&self, user: &User) -> Value {
        let mut allowed_ips = vec![format!("{}/32", self.gateway)];
        allowed_ips.extend(user.allowed.iter().map(|n| n.to_string()));
        let endpoint = self.cfg.endpoints.first().cloned().unwrap_or_default();
        json!({
            "name": user.name,
            "gateway_public_key": self.server_public,
            "gateway_address": self.gateway.to_string(),
            "endpoints": self.cfg.endpoints,
            "address": format!("{}/32", user.address),
            "allowed_ips": allowed_ips,
            "dns": self.cfg.dns,
            "client_config": users::client_config(user, 32, &self.server_public, &endpoint, &self.cfg.dns, &allowed_ips),
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
        self.engine.upsert(&user)?;
        self.apply_firewall()?;
        Ok(self.user_answer(&user))
    }
}
