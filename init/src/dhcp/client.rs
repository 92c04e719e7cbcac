//! Drives the [`Machine`] on its own thread: waits on the packet socket until
//! a reply or the next deadline, carries out the actions (send, apply,
//! remove, fallback), persists the lease for INIT-REBOOT and reports each
//! change on the console. It never returns while the interface exists.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::{apply, socket, Action, Lease, Machine};

pub struct Client {
    pub ifname: String,
    /// Where the last lease is kept (on /var), for INIT-REBOOT.
    pub lease_path: Option<PathBuf>,
    /// Called once per INIT cycle when no server answered for
    /// [`super::machine::FALLBACK_AFTER_MS`]: the static fallback.
    pub fallback: Box<dyn Fn() + Send>,
    /// Called with each lease applied (addresses for control, DNS/NTP).
    pub on_lease: Box<dyn Fn(&Lease) + Send>,
    /// Console lines.
    pub say: Box<dyn Fn(&str) + Send>,
}

fn mono_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The interface's MAC address (getifaddrs: netlink, so it follows the
/// network namespace, unlike /sys).
pub fn mac_of(ifname: &str) -> Result<[u8; 6]> {
    let addrs = nix::ifaddrs::getifaddrs().context("listing interfaces")?;
    addrs
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address?.as_link_addr()?.addr())
        .with_context(|| format!("{ifname} has no ethernet address"))
}

fn describe(l: &Lease) -> String {
    let routes: Vec<String> = l
        .routes()
        .iter()
        .map(|(d, g)| format!("{d} via {g}"))
        .collect();
    format!(
        "{}/{} from {} for {} s (renew {} s, rebind {} s), routes [{}], dns {:?}",
        l.address,
        l.prefix,
        l.server,
        l.lease_secs,
        l.renew_secs,
        l.rebind_secs,
        routes.join(", "),
        l.dns
    )
}

impl Client {
    fn last_lease(&self) -> Option<Lease> {
        let p = self.lease_path.as_ref()?;
        let text = std::fs::read_to_string(p).ok()?;
        match serde_json::from_str(&text) {
            Ok(l) => Some(l),
            Err(e) => {
                (self.say)(&format!(
                    "dhcp: ignoring the saved lease {}: {e}",
                    p.display()
                ));
                None
            }
        }
    }

    fn save(&self, l: &Lease) {
        if let Some(p) = &self.lease_path {
            let r = serde_json::to_vec(l)
                .map_err(anyhow::Error::from)
                .and_then(|b| gwos_core::state::write_atomic(p, &b));
            if let Err(e) = r {
                (self.say)(&format!(
                    "dhcp: could not keep the lease in {}: {e:#}",
                    p.display()
                ));
            }
        }
    }

    /// Runs the client; returns only on a socket error.
    pub fn run(self) -> Result<()> {
        let index = nix::net::if_::if_nametoindex(self.ifname.as_str())
            .with_context(|| format!("no interface {}", self.ifname))?;
        let mac = mac_of(&self.ifname)?;
        let pkt = socket::PacketSocket::open(index).context("DHCP packet socket")?;
        let udp = socket::unicast_socket(&self.ifname).context("DHCP unicast socket")?;
        let mut m = Machine::new(mac, rand::random());
        let mut actions = m.start(mono_ms(), unix_now(), self.last_lease());
        let mut buf = vec![0u8; 2048];
        let mut drain = [0u8; 1500];
        loop {
            for a in actions.drain(..) {
                match a {
                    Action::Broadcast(b) => {
                        if let Err(e) = pkt.broadcast(&b) {
                            (self.say)(&format!("dhcp: {} send: {e}", self.ifname));
                        }
                    }
                    Action::Unicast(server, b) => {
                        if let Err(e) = socket::send_unicast(&udp, server, &b) {
                            (self.say)(&format!("dhcp: unicast to {server}: {e}"));
                        }
                    }
                    Action::Apply(l) => match apply::apply(index, &l) {
                        Ok(()) => {
                            (self.say)(&format!("dhcp: {} bound {}", self.ifname, describe(&l)));
                            self.save(&l);
                            (self.on_lease)(&l);
                        }
                        Err(e) => (self.say)(&format!("dhcp: applying the lease failed: {e:#}")),
                    },
                    Action::Remove(l) => {
                        (self.say)(&format!(
                            "dhcp: {} lease of {} ended; address and routes removed",
                            self.ifname, l.address
                        ));
                        if let Err(e) = apply::remove(index, &l) {
                            (self.say)(&format!("dhcp: removing {}: {e:#}", l.address));
                        }
                    }
                    Action::Fallback => {
                        (self.say)(&format!(
                            "dhcp: no answer on {} yet; static fallback applied, still asking",
                            self.ifname
                        ));
                        (self.fallback)();
                    }
                }
            }
            let wait = m.deadline_ms().saturating_sub(mono_ms()).min(60_000);
            let wait =
                PollTimeout::try_from(Duration::from_millis(wait)).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(pkt.fd(), PollFlags::POLLIN)];
            if let Err(e) = poll(&mut fds, wait) {
                if e != nix::errno::Errno::EINTR {
                    return Err(e).context("DHCP poll");
                }
            }
            while let Ok((_, _)) = udp.recv_from(&mut drain) {}
            while let Some(p) = pkt.recv(&mut buf).context("DHCP receive")? {
                if let Some(d) = socket::payload(p) {
                    let d = d.to_vec();
                    actions.extend(m.on_packet(mono_ms(), unix_now(), &d));
                }
            }
            actions.extend(m.on_timer(mono_ms()));
        }
    }
}
