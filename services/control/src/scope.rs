//! Scopes (capabilities) carried by control keys and the command table that
//! says which scope each command needs.

use std::collections::BTreeSet;

/// Every scope a key may carry. `admin` implies all of them.
pub const SCOPES: &[&str] = &[
    "health:read",
    "vpn:read",
    "vpn:write",
    "spa:read",
    "spa:write",
    "sessions:write",
    "logs:read",
    "config:read",
    "config:write",
    "keys:write",
    "update:write",
    "admin",
];

/// One allowlisted command.
#[derive(Debug, Clone, Copy)]
pub struct CommandSpec {
    pub name: &'static str,
    /// Scope needed; `None` = any authenticated key (only `help`).
    pub scope: Option<&'static str>,
    /// May need a second admin key's approval (site config `require_approval`).
    pub risky: bool,
    pub summary: &'static str,
}

const fn c(
    name: &'static str,
    scope: &'static str,
    risky: bool,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        scope: Some(scope),
        risky,
        summary,
    }
}

pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "help",
        scope: None,
        risky: false,
        summary: "commands this key may call",
    },
    c(
        "health",
        "health:read",
        false,
        "control health, host key fingerprint, peer services",
    ),
    c(
        "vpn_user_create",
        "vpn:write",
        false,
        "add a VPN user (WireGuard public key)",
    ),
    c("vpn_user_delete", "vpn:write", false, "remove a VPN user"),
    c("vpn_user_list", "vpn:read", false, "list VPN users"),
    c("vpn_status", "vpn:read", false, "VPN service status"),
    c(
        "update_ccd",
        "vpn:write",
        false,
        "set a VPN user's routes and DNS",
    ),
    c(
        "spa_user_set",
        "spa:write",
        false,
        "add or replace an SPA user's keys",
    ),
    c("spa_user_delete", "spa:write", false, "remove an SPA user"),
    c("spa_user_list", "spa:read", false, "list SPA users"),
    c(
        "control_key_add",
        "keys:write",
        true,
        "add a control key with scopes",
    ),
    c(
        "control_key_remove",
        "keys:write",
        true,
        "remove a control key added at runtime",
    ),
    c(
        "control_key_list",
        "keys:write",
        false,
        "list control keys and their scopes",
    ),
    c(
        "config_get",
        "config:read",
        false,
        "runtime config overrides and effective values",
    ),
    c(
        "config_set",
        "config:write",
        false,
        "set runtime config overrides",
    ),
    c(
        "pull_logs",
        "logs:read",
        false,
        "audit records for a time window",
    ),
    c("reboot", "admin", true, "ask init to reboot the gateway"),
    c(
        "spawn_browser_container",
        "sessions:write",
        false,
        "not available in this release",
    ),
    c(
        "terminate_session",
        "sessions:write",
        false,
        "not available in this release",
    ),
    c(
        "update_apply",
        "update:write",
        true,
        "stream a signed update bundle on stdin into the inactive slot",
    ),
    c(
        "update_status",
        "update:write",
        false,
        "both slots (version, root hash, state), the floor, the last update",
    ),
    c(
        "update_rollback",
        "update:write",
        true,
        "make the other good slot the next boot",
    ),
];

pub fn command(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// A key's scope set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub BTreeSet<String>);

impl Scopes {
    /// Parses a list of scope names; unknown names are an error naming them.
    pub fn parse(list: &[String]) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for s in list {
            if !SCOPES.contains(&s.as_str()) {
                return Err(format!(
                    "unknown scope {s:?} (known: {})",
                    SCOPES.join(", ")
                ));
            }
            set.insert(s.clone());
        }
        if set.is_empty() {
            return Err("a key needs at least one scope".into());
        }
        Ok(Self(set))
    }

    pub fn has(&self, scope: &str) -> bool {
        self.0.contains("admin") || self.0.contains(scope)
    }

    pub fn allows(&self, spec: &CommandSpec) -> bool {
        spec.scope.is_none_or(|s| self.has(s))
    }

    /// True if every scope of `other` is held by `self` (no escalation).
    pub fn covers(&self, other: &Scopes) -> bool {
        other.0.iter().all(|s| self.has(s))
    }

    pub fn list(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_all_and_unknown_scope_rejected() {
        let admin = Scopes::parse(&["admin".into()]).unwrap();
        let ro = Scopes::parse(&["vpn:read".into()]).unwrap();
        assert!(admin.allows(command("reboot").unwrap()));
        assert!(ro.allows(command("vpn_user_list").unwrap()));
        assert!(!ro.allows(command("vpn_user_create").unwrap()));
        assert!(ro.allows(command("help").unwrap()));
        assert!(admin.covers(&ro) && !ro.covers(&admin));
        assert!(Scopes::parse(&["root".into()])
            .unwrap_err()
            .contains("root"));
        assert!(Scopes::parse(&[]).is_err());
        for c in COMMANDS {
            if let Some(s) = c.scope {
                assert!(SCOPES.contains(&s), "{}", c.name);
            }
        }
    }
}
