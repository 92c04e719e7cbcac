//! DHCPv4 client of PID 1 (`[network] mode = "dhcp"`): our own RFC 2131 state
//! machine ([`machine`]: INIT, SELECTING, REQUESTING, BOUND, RENEWING,
//! REBINDING, INIT-REBOOT/REBOOTING) over `dhcproto`'s wire format
//! ([`wire`]), an AF_PACKET socket with a classic BPF filter that passes only
//! IPv4/UDP to port 68 ([`socket`]: stray IPv6 or ARP frames never reach the
//! parser), and rtnetlink to apply a lease ([`apply`]: address with its
//! lifetime, routes; option 121 overrides option 3). [`client`] drives it on
//! its own thread, so PID 1's main loop never waits on the network; the last
//! lease is kept on /var for INIT-REBOOT.
//!
//! Timers follow RFC 2131 §4.4.5: renew at T1 (default 0.5 × lease) by
//! unicast to the server identifier, rebind at T2 (default 0.875 × lease) by
//! broadcast (any server may answer), and at the lease's end the address and
//! routes are removed and the client starts over. Retransmissions back off
//! 4, 8, 16, 32, 64 s (RFC 2131 §4.1), with a fixed jitter from the xid.

pub mod apply;
pub mod client;
pub mod lease;
pub mod machine;
pub mod socket;
pub mod wire;

pub use lease::Lease;
pub use machine::{Action, Machine, State};
