//! Scopes (capabilities) carried by control keys. Which scope a command
//! needs is a column of the command table ([`crate::command`]).

use std::collections::BTreeSet;

use crate::command::Command;

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

    pub fn allows(&self, command: Command) -> bool {
        command.scope().is_none_or(|s| self.has(s))
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

    fn scopes(list: &[&str]) -> Scopes {
        Scopes::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn admin_implies_all() {
        let admin = scopes(&["admin"]);
        let ro = scopes(&["vpn:read"]);
        assert!(admin.allows(Command::Reboot));
        assert!(ro.allows(Command::VpnUserList));
        assert!(!ro.allows(Command::VpnUserCreate));
        assert!(ro.allows(Command::Help));
        assert!(admin.covers(&ro) && !ro.covers(&admin));
    }

    #[test]
    fn unknown_or_no_scope_rejected() {
        let e = Scopes::parse(&["root".into()]).unwrap_err();
        assert!(e.starts_with("unknown scope \"root\""), "{e}");
        assert_eq!(
            Scopes::parse(&[]),
            Err("a key needs at least one scope".to_string())
        );
    }
}
