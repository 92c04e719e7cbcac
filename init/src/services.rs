//! The table of services `gwosd run <name>` can start. Each entry is a
//! service crate's `run`; the sandbox around it is set up by the supervisor
//! before this is reached.

use gwos_core::ServiceContext;

type RunFn = fn(ServiceContext) -> anyhow::Result<()>;

/// Every service this binary carries, by the name used in the service table.
pub const SERVICES: &[(&str, RunFn)] = &[
    ("spa", gwos_spa::run),
    ("vpn", gwos_vpn::run),
    ("tls-front", gwos_tls_front::run),
    ("control", gwos_control::run),
];

pub fn lookup(name: &str) -> Option<RunFn> {
    SERVICES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
