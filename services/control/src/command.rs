//! The one table of control commands. Each row is one [`Command`] variant and
//! carries everything the rest of the crate derives from it: the wire name,
//! the scope a key needs, the risk (whether the site config may demand a
//! second admin key's approval), the effect (a change gets a durable
//! intent record before it runs), the parameter type (a
//! `deny_unknown_fields` struct in [`crate::params`] implementing
//! [`Validate`]) and the handler (a function in [`crate::handlers`]).
//! `help`, the scope check, validation, the audit record's arguments and
//! dispatch all read this table; nothing else names a command.
//!
//! The name from the `exec` request is parsed once ([`Command::from_str`]);
//! after that the code matches on the enum, and the macro below generates
//! exhaustive matches, so a row without a handler does not compile.
//!
//! # Adding a command
//!
//! 1. If it takes parameters, add a `#[serde(deny_unknown_fields)]` struct
//!    to `params.rs` and `impl Validate` for it (checks every field, returns
//!    the validated value, which must be `Serialize`: it is what the audit
//!    record shows). Parameterless commands use [`crate::params::Empty`].
//! 2. Write the handler in `handlers.rs`:
//!    `fn my_cmd(ctl: &Control, p: <Params as Validate>::Valid, cx: &Ctx) -> Result<Value, String>`.
//!    A command that forwards to a service uses `ctl.forward(service,
//!    cx.command.name(), ...)`, so the RPC method name is not repeated.
//! 3. Add one row to the `commands!` table below and a row to the table in
//!    `docs/control.md`.
//!
//! A `Risk::High` command can be listed in `[control] require_approval`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::handlers::{self, Ctx};
use crate::params::{self, Empty, Validate};
use crate::request::FieldError;

/// Whether the site config may require a second admin key's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Never needs an approval.
    Normal,
    /// Needs one when listed in `[control] require_approval`.
    High,
}

/// What a command does to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only reads.
    Read,
    /// Changes state here or in another service: an intent record is made
    /// durable before it runs, and it is refused if that fails.
    Change,
}

/// A command name that is not in the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command {0:?}; `help` lists the commands this key may call")]
pub struct UnknownCommand(pub String);

macro_rules! commands {
    ($(
        $(#[$doc:meta])*
        $variant:ident {
            name: $name:literal,
            scope: $scope:expr,
            risk: $risk:ident,
            effect: $effect:ident,
            params: $params:ty,
            handler: $handler:path,
            summary: $summary:literal $(,)?
        }
    )*) => {
        /// One allowlisted control command.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Command {
            $( $(#[$doc])* $variant, )*
        }

        /// A command's validated parameters: one variant per [`Command`].
        #[derive(Debug, Clone)]
        pub enum Params {
            $( $variant(<$params as Validate>::Valid), )*
        }

        impl Command {
            /// Every command, in table order (the order `help` lists them).
            pub const ALL: &'static [Command] = &[ $( Command::$variant, )* ];

            /// The name on the wire (`ssh gwctl@gw <name>`).
            pub const fn name(self) -> &'static str {
                match self { $( Command::$variant => $name, )* }
            }

            /// Scope a key needs; `None` = any authenticated key.
            pub const fn scope(self) -> Option<&'static str> {
                match self { $( Command::$variant => $scope, )* }
            }

            pub const fn risk(self) -> Risk {
                match self { $( Command::$variant => Risk::$risk, )* }
            }

            /// Whether the command changes state (and so gets an intent record first).
            pub const fn effect(self) -> Effect {
                match self { $( Command::$variant => Effect::$effect, )* }
            }

            /// One line for `help`.
            pub const fn summary(self) -> &'static str {
                match self { $( Command::$variant => $summary, )* }
            }

            /// Strictly validates `params` (the request object without
            /// `trace_id` and `approval`) for this command.
            pub fn validate(self, params: &Map<String, Value>, now: i64) -> Result<Params, FieldError> {
                match self {
                    $( Command::$variant => Ok(Params::$variant(
                        params::typed::<$params>(params)?.validate(now)?,
                    )), )*
                }
            }
        }

        impl Params {
            pub fn command(&self) -> Command {
                match self { $( Params::$variant(_) => Command::$variant, )* }
            }

            /// The validated parameters as JSON (before redaction).
            pub fn to_value(&self) -> Value {
                match self {
                    $( Params::$variant(p) => serde_json::to_value(p).unwrap_or(Value::Null), )*
                }
            }

            /// Runs the command's handler.
            pub(crate) fn execute(self, ctl: &crate::commands::Control, cx: &Ctx<'_>) -> Result<Value, handlers::HandlerError> {
                match self { $( Params::$variant(p) => $handler(ctl, p, cx), )* }
            }
        }

        impl FromStr for Command {
            type Err = UnknownCommand;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $name => Ok(Command::$variant), )*
                    other => Err(UnknownCommand(other.to_owned())),
                }
            }
        }
    };
}

commands! {
    Help {
        name: "help", scope: None, risk: Normal, effect: Read, params: Empty,
        handler: handlers::help, summary: "commands this key may call",
    }
    Health {
        name: "health", scope: Some("health:read"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::health, summary: "control health, host key fingerprint, peer services",
    }
    VpnUserCreate {
        name: "vpn_user_create", scope: Some("vpn:write"), risk: Normal, effect: Change, params: params::VpnUserCreate,
        handler: handlers::vpn_user_create, summary: "add a VPN user (WireGuard public key)",
    }
    VpnUserDelete {
        name: "vpn_user_delete", scope: Some("vpn:write"), risk: Normal, effect: Change, params: params::UserOnly,
        handler: handlers::vpn_user_delete, summary: "remove a VPN user",
    }
    VpnUserList {
        name: "vpn_user_list", scope: Some("vpn:read"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::forward_vpn, summary: "list VPN users",
    }
    VpnStatus {
        name: "vpn_status", scope: Some("vpn:read"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::forward_vpn, summary: "VPN service status",
    }
    UpdateCcd {
        name: "update_ccd", scope: Some("vpn:write"), risk: Normal, effect: Change, params: params::UpdateCcd,
        handler: handlers::update_ccd, summary: "set a VPN user's routes and DNS",
    }
    SpaUserSet {
        name: "spa_user_set", scope: Some("spa:write"), risk: Normal, effect: Change, params: params::SpaUserSet,
        handler: handlers::forward_spa, summary: "add or replace an SPA user's keys",
    }
    SpaUserDelete {
        name: "spa_user_delete", scope: Some("spa:write"), risk: Normal, effect: Change, params: params::UserOnly,
        handler: handlers::forward_spa, summary: "remove an SPA user",
    }
    SpaUserList {
        name: "spa_user_list", scope: Some("spa:read"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::forward_spa, summary: "list SPA users",
    }
    VpnUserRenew {
        name: "vpn_user_renew", scope: Some("vpn:write"), risk: Normal, effect: Change, params: params::VpnUserRenew,
        handler: handlers::vpn_user_renew, summary: "extend a VPN user's grant (expires_secs from now)",
    }
    VpnUserConfig {
        name: "vpn_user_config", scope: Some("vpn:read"), risk: Normal, effect: Read, params: params::UserOnly,
        handler: handlers::forward_vpn_user, summary: "a VPN user's client config again (after a DNS change)",
    }
    ControlKeyAdd {
        name: "control_key_add", scope: Some("keys:write"), risk: High, effect: Change, params: params::KeyAdd,
        handler: handlers::control_key_add, summary: "add a control key with scopes",
    }
    ControlKeyRemove {
        name: "control_key_remove", scope: Some("keys:write"), risk: High, effect: Change, params: params::KeyRemove,
        handler: handlers::control_key_remove, summary: "remove a control key added at runtime",
    }
    ControlKeyList {
        name: "control_key_list", scope: Some("keys:write"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::control_key_list, summary: "list control keys and their scopes",
    }
    ConfigGet {
        name: "config_get", scope: Some("config:read"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::config_get, summary: "runtime config overrides and effective values",
    }
    ConfigSet {
        name: "config_set", scope: Some("config:write"), risk: Normal, effect: Change, params: params::ConfigSet,
        handler: handlers::config_set, summary: "set runtime config overrides",
    }
    PullLogs {
        name: "pull_logs", scope: Some("logs:read"), risk: Normal, effect: Read, params: params::PullLogs,
        handler: handlers::pull_logs, summary: "audit records for a time window",
    }
    Reboot {
        name: "reboot", scope: Some("admin"), risk: High, effect: Change, params: Empty,
        handler: handlers::reboot, summary: "ask init to reboot the gateway",
    }
    SpawnBrowserContainer {
        name: "spawn_browser_container", scope: Some("sessions:write"), risk: Normal, effect: Change, params: Empty,
        handler: handlers::not_available, summary: "not available in this release",
    }
    TerminateSession {
        name: "terminate_session", scope: Some("sessions:write"), risk: Normal, effect: Change, params: Empty,
        handler: handlers::not_available, summary: "not available in this release",
    }
    /// Streamed: its stdin is the bundle (crate::update), never this handler's JSON.
    UpdateApply {
        name: "update_apply", scope: Some("update:write"), risk: High, effect: Change, params: Empty,
        handler: handlers::update_apply_not_streamed, summary: "stream a signed update bundle on stdin into the inactive slot",
    }
    UpdateStatus {
        name: "update_status", scope: Some("update:write"), risk: Normal, effect: Read, params: Empty,
        handler: handlers::update_status, summary: "both slots (version, root hash, state), the floor, the last update",
    }
    UpdateRollback {
        name: "update_rollback", scope: Some("update:write"), risk: High, effect: Change, params: Empty,
        handler: handlers::update_rollback, summary: "make the other good slot the next boot",
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|UnknownCommand(name)| {
            let known: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
            serde::de::Error::custom(format!(
                "unknown command {name:?} (known: {})",
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::SCOPES;

    #[test]
    fn names_round_trip_and_are_unique() {
        for c in Command::ALL {
            assert_eq!(c.name().parse::<Command>(), Ok(*c));
        }
        let mut names: Vec<&str> = Command::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Command::ALL.len());
        assert_eq!(
            "sudo".parse::<Command>(),
            Err(UnknownCommand("sudo".into()))
        );
    }

    #[test]
    fn every_scope_is_known() {
        for c in Command::ALL {
            if let Some(s) = c.scope() {
                assert!(SCOPES.contains(&s), "{c}: scope {s}");
            }
        }
    }

    #[test]
    fn config_names_parse_with_a_clear_error() {
        let v: Vec<Command> = serde_json::from_str(r#"["reboot","control_key_add"]"#).unwrap();
        assert_eq!(v, [Command::Reboot, Command::ControlKeyAdd]);
        let e = serde_json::from_str::<Vec<Command>>(r#"["rebot"]"#).unwrap_err();
        assert!(e.to_string().contains("unknown command \"rebot\""), "{e}");
    }
}
