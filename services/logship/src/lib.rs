//! logship: every gateway event, durably, to the SIEM.
//!
//! Where it sits: each service writes its events as JSON lines to its stdout,
//! a pipe PID 1 gives it (`init/src/events.rs`). PID 1 forwards each line,
//! tagged with the service's name, to `/run/gwos/logship-ingest.sock`. logship
//! appends it to the [`spool`] on `/var` (group commit, fdatasync) and the
//! [`shipper`] sends it as RFC 5424 over TLS 1.3 (RFC 5425 octet counting) to
//! the SIEM.
//!
//! Confirmation without application acks (RFC 5425 has none, rsyslog sends
//! none): a record counts as shipped once the peer's TCP acknowledged its
//! bytes (`TCP_INFO` `tcpi_bytes_acked`) and the connection was still alive
//! 0.5 s later; everything unconfirmed stays in an in-flight window that is
//! sent again after any reconnect. At least once; a SIEM dedups by
//! (`boot_id`, `seq`). Details in [`shipper`]; the one unsafe call is in
//! `sys`.
#![deny(unsafe_code)]

pub mod ingest;
pub mod record;
pub mod service;
pub mod shipper;
pub mod spool;
#[allow(unsafe_code)]
mod sys;
pub mod syslog;
pub mod tls;

pub use service::{run, LogshipConfig};

#[cfg(test)]
mod spool_tests;
