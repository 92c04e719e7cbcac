//! What every gateway service shares. Init (`gwosd`) starts each service as
//! `gwosd run <name>` with a [`ServiceContext`]: the site config baked into the
//! image (`/etc/gwos/site.toml`), the service's own state directory on `/var`
//! (written atomically through [`state`]; authorization state sealed
//! with a per-machine key through [`sealed`]), and `/run/gwos` where services serve
//! their local RPC sockets ([`rpc`]) that the control channel calls. Every
//! security decision leaves the process as a structured [`event`] line that
//! logship ships to the SIEM.

#![forbid(unsafe_code)]

pub mod boot_status;
pub mod context;
pub mod event;
pub mod rpc;
pub mod sealed;
pub mod site;
pub mod state;
pub mod state_template;
pub mod verity;

pub use context::ServiceContext;
pub use event::{emit, Event};
pub use site::SiteConfig;
