//! Stage 2: PID 1 in the verified root (`/sbin/init`). Mounts the API file
//! systems and the state partition at /var, applies the sysctl hardening
//! list, loads the base nftables ruleset, configures the network, then
//! supervises the services, prints the ready line once every required
//! service is healthy, blesses the boot and shuts down cleanly on request.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::stage1::BootInfo;
use crate::supervisor::{table, Supervisor};
use crate::{bless, cgroup, cmdline, console, gpt_find, mounts, net, shutdown, state, sysctl};

const SERVICES: &str = "/etc/gwos/services.toml";
const SYSCTL: &str = "/etc/gwos/sysctl.conf";
const SITE: &str = "/etc/gwos/site.toml";
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SystemConfig {
    pub hostname: String,
}

pub fn main(t0_ms: u64) -> ! {
    console::set_init_mode();
    let now = crate::boottime_ms();
    console::say(&format!(
        "stage 2 (verified root) started, {} ms after stage 1",
        now.saturating_sub(t0_ms)
    ));
    if let Err(e) = mount_api() {
        console::fatal(&format!("stage 2 mounts: {e:#}"));
    }
    let signals = block_signals();
    let _ = nix::sys::reboot::set_cad_enabled(false); // ctrl-alt-del → SIGINT to PID 1
    let esp = gpt_find::wait_for(&["esp"], Duration::from_secs(2))
        .ok()
        .map(|mut v| v.remove(0));
    let site = match gwos_core::SiteConfig::load(std::path::Path::new(SITE)) {
        Ok(s) => s,
        Err(e) => console::fatal(&format!("{e:#}")),
    };
    let boot_cfg = match site
        .section::<bless::BootConfig>("boot")
        .and_then(|c| c.validate().map(|_| c))
    {
        Ok(c) => c,
        Err(e) => console::fatal(&format!("{e:#}")),
    };
    if let Err(e) = harden_and_connect(&site) {
        console::fatal(&format!("{e:#}"));
    }
    let mut boot = Boot::new(boot_info(), boot_cfg, development(&site), esp);
    let table = match load_table() {
        Ok(t) => t,
        Err(e) => console::fatal(&format!("service table {SERVICES}: {e:#}")),
    };
    tun_device(&table);
    state_keys(&table);
    // After /run/gwos exists (state::mount_var) and before any service runs,
    // so no service can bind init.sock first.
    crate::initsock::spawn(std::path::Path::new(gwos_core::context::RUN_DIR));
    update_devices(&table);
    let buttons = shutdown::watch_power_button();
    console::say(&format!(
        "watching {buttons} input devices for the power button"
    ));
    let mut sup = match Supervisor::new(&table, "/sbin/init") {
        Ok(s) => s,
        Err(e) => console::fatal(&format!("{e:#}")),
    };
    console::say(&format!("supervising {} services", sup.units.len()));
    let req = run_loop(&mut sup, &signals, t0_ms, &mut boot);
    stop(&mut sup, req)
}

fn mount_api() -> Result<()> {
    let none = MsFlags::empty();
    mounts::fs_once("proc", "/proc", "proc", mounts::SAFE, Some("hidepid=2"))?;
    mounts::fs_once("sysfs", "/sys", "sysfs", mounts::SAFE, None)?;
    mounts::fs_once(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    mounts::fs_once(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    mounts::fs_once(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        mounts::SAFE,
        Some("mode=1777,size=16m"),
    )?;
    mounts::fs_once(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=32m"),
    )?;
    mounts::fs_once(
        "tmpfs",
        "/tmp",
        "tmpfs",
        mounts::SAFE,
        Some("mode=1777,size=64m"),
    )?;
    mounts::fs_once(
        "cgroup2",
        cgroup::ROOT,
        "cgroup2",
        mounts::SAFE,
        Some("nsdelegate"),
    )?;
    if std::path::Path::new("/sys/firmware/efi").exists() {
        mounts::fs_once(
            "efivarfs",
            "/sys/firmware/efi/efivars",
            "efivarfs",
            mounts::SAFE | none,
            None,
        )?;
    }
    cgroup::enable_controllers()?;
    Ok(())
}

fn harden_and_connect(site: &gwos_core::SiteConfig) -> Result<()> {
    for line in sysctl::apply_all(
        &std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?,
    )? {
        console::say(&format!("sysctl {line}"));
    }
    let sys: SystemConfig = site.section("system")?;
    let host = if sys.hostname.is_empty() {
        "gwos".to_string()
    } else {
        sys.hostname
    };
    nix::unistd::sethostname(&host).context("sethostname")?;
    console::say(&format!("hostname {host}"));
    let fw = gwos_netfilter::base::BaseConfig::from_site(site).context("firewall config")?;
    gwos_netfilter::base::load(&fw)
        .map_err(|e| anyhow::anyhow!("loading the base nftables ruleset: {e}"))?;
    console::say(&format!("firewall: base ruleset loaded (default deny; spa udp/{}, control tcp/{} from {} backend networks)", fw.spa_port, fw.control_port, fw.backend.len()));
    let netcfg: net::NetworkConfig = site.section("network")?;
    for line in crate::pci::report(&crate::pci::scan(std::path::Path::new(
        "/sys/bus/pci/devices",
    ))) {
        console::say(&line);
    }
    net::start(&netcfg).context("network")?;
    console::say(&format!("state: {}", state::mount_var()?));
    Ok(())
}

/// devtmpfs makes /dev/net/tun root:root 0600 (there is no udev to relax
/// it): give it to the vpn's group, which still needs CAP_NET_ADMIN to create
/// an interface with it (better than CAP_DAC_OVERRIDE for the vpn).
fn tun_device(table: &table::Table) {
    use std::os::unix::fs::PermissionsExt;
    let Some(vpn) = table.service.iter().find(|s| s.name == "vpn") else {
        return;
    };
    let r = std::os::unix::fs::chown("/dev/net/tun", Some(0), Some(vpn.gid)).and_then(|_| {
        std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o660))
    });
    match r {
        Ok(()) => console::say(&format!("/dev/net/tun: root:{} 0660", vpn.gid)),
        Err(e) => console::say(&format!("/dev/net/tun: {e} (the vpn cannot create gw0)")),
    }
}

/// The machine secret and each service's sealing key, before any service
/// starts. Without them control refuses its runtime keys and overrides (site
/// keys still work), so a failure here is loud but not fatal.
fn state_keys(table: &table::Table) {
    use crate::supervisor::state_keys::{provision, Source};
    match provision(&table.service) {
        Ok(Source::Efi(p)) => console::say(&format!(
            "state sealing: machine secret in EFI variable {}; offline edits of sealed state are detected",
            p.display()
        )),
        Ok(Source::StatePartition { path, why }) => console::say(&format!(
            "WARNING: state sealing: {why}; the machine secret is on the state partition ({}). Anyone with offline access to the disk can read it and forge control's runtime keys: offline edits are NOT detected",
            path.display()
        )),
        Err(e) => console::say(&format!(
            "WARNING: state sealing keys could not be made: {e:#}; control will refuse its runtime keys and overrides (site keys still work)"
        )),
    }
}

/// The update service writes the inactive slot and the ESP: give its group
/// exactly those three partitions (root-<other>, verity-<other>, esp), 0660.
/// The active slot and the state partition stay root's.
fn update_devices(table: &table::Table) {
    use std::os::unix::fs::PermissionsExt;
    let Some(update) = table.service.iter().find(|s| s.name == "update") else {
        return;
    };
    let other = match cmdline::get("gwos.slot").as_deref() {
        Some("a") => "b",
        Some("b") => "a",
        _ => return,
    };
    let labels = [
        format!("root-{other}"),
        format!("verity-{other}"),
        "esp".into(),
    ];
    for (label, part) in gpt_find::scan() {
        if !labels.contains(&label) {
            continue;
        }
        let dev = part.dev_path();
        let r = std::os::unix::fs::chown(&dev, Some(0), Some(update.gid))
            .and_then(|_| std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o660)));
        match r {
            Ok(()) => console::say(&format!(
                "{dev} ({label}): root:{} 0660 for the update service",
                update.gid
            )),
            Err(e) => console::say(&format!("{dev} ({label}): {e} (updates cannot be written)")),
        }
    }
}

fn load_table() -> Result<table::Table> {
    let mut t = table::parse(&std::fs::read_to_string(SERVICES)?)?;
    if cmdline::test_flag("supervisor") {
        console::say("TEST MODE (gwos.test=supervisor): adding built-in services selftest and selftest-crash");
        t.service.extend(crate::services::selftest_table());
        t.check()?;
    }
    Ok(t)
}

fn block_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPWR,
    ] {
        s.add(sig);
    }
    let _ = s.thread_block();
    s
}

/// Waits up to `ms` for one of the blocked signals.
fn wait_signal(set: &SigSet, ms: u64) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: `set` points to a valid sigset_t for the call's duration, the
    // siginfo pointer may be NULL, and `ts` is a valid timespec on the stack.
    let r = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

fn reap(sup: &mut Supervisor) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => {
                sup.on_exit(pid, &format!("exit status {code}"), code == 0)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                sup.on_exit(pid, &format!("killed by {sig:?}"), false)
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn run_loop(
    sup: &mut Supervisor,
    signals: &SigSet,
    t0_ms: u64,
    boot: &mut Boot,
) -> shutdown::Request {
    let mut ready = false;
    let mut test_killed = false;
    loop {
        match wait_signal(signals, 200) {
            Some(libc::SIGTERM) | Some(libc::SIGPWR) => return shutdown::Request::PowerOff,
            Some(libc::SIGINT) => return shutdown::Request::Reboot,
            _ => {}
        }
        if crate::initsock::take_reboot_request() {
            return shutdown::Request::Reboot;
        }
        if shutdown::power_button_pressed() {
            console::say("power button pressed");
            return shutdown::Request::PowerOff;
        }
        reap(sup);
        sup.tick();
        if !ready && sup.all_required_healthy() && net::uplink_ready() {
            ready = true;
            let ms = crate::boottime_ms().saturating_sub(t0_ms);
            let slot = cmdline::get("gwos.slot").unwrap_or_default().to_uppercase();
            console::say(&format!(
                "ready slot={slot} version={} boot_ms={ms}",
                os_version()
            ));
            boot.on_ready();
        }
        if let Some(req) = boot.tick(sup) {
            return req;
        }
        if ready && !test_killed && cmdline::test_flag("supervisor") {
            if let Some(pid) = sup.pid_of("selftest") {
                test_killed = true;
                console::say(&format!("TEST: sending SIGKILL to selftest pid {pid}"));
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
    }
}

/// What stage 1 verified (GWOS_BOOT); a fallback from the command line and
/// os-release when it is missing (the floor is then not touched).
fn boot_info() -> BootInfo {
    if let Some(i) = std::env::var(crate::stage1::BOOT_INFO_ENV)
        .ok()
        .and_then(|v| serde_json::from_str::<BootInfo>(&v).ok())
    {
        return i;
    }
    console::say("no boot info from stage 1: the security floor is left as it is");
    BootInfo {
        slot: cmdline::get("gwos.slot").unwrap_or_default(),
        version: 0,
        version_id: os_version(),
        manifest_floor: 0,
        stored_floor: 0,
        disk: String::new(),
        root_hash: cmdline::get("gwos.roothash").unwrap_or_default(),
    }
}

/// A development-key image: `gwos build` adds the dev control key to the
/// site config with a comment starting "DEVELOPMENT".
fn development(site: &gwos_core::SiteConfig) -> bool {
    site.raw()
        .get("control")
        .and_then(|c| c.get("keys"))
        .and_then(|k| k.as_array())
        .is_some_and(|keys| {
            keys.iter().any(|k| {
                k.get("comment")
                    .and_then(|c| c.as_str())
                    .is_some_and(|c| c.starts_with("DEVELOPMENT"))
            })
        })
}

/// The blessing side of the run loop: publishes boot.json, blesses a trial
/// boot once the gate says so (bless::decide), or gives up and reboots.
struct Boot {
    info: BootInfo,
    cfg: bless::BootConfig,
    entry: Option<bless::Entry>,
    esp: Option<gpt_find::Part>,
    status: bless::BootStatus,
    started: Instant,
    healthy_since: Option<Duration>,
    done: bool,
}

impl Boot {
    fn new(
        info: BootInfo,
        cfg: bless::BootConfig,
        development: bool,
        esp: Option<gpt_find::Part>,
    ) -> Boot {
        let entry = match bless::trial_entry() {
            Ok(e) => e,
            Err(e) => {
                console::say(&format!(
                    "boot counting: {e:#}; treating this boot as not counted"
                ));
                None
            }
        };
        let last_bad = match gwos_core::state::read_json::<bless::LastBad>(std::path::Path::new(
            bless::LAST_BAD,
        )) {
            Ok(v) => v,
            Err(e) => {
                console::say(&format!("{}: {e:#}", bless::LAST_BAD));
                None
            }
        };
        if let Some(lb) = &last_bad {
            console::say(&format!(
                "last bad boot: slot {} version {}: {}",
                lb.slot, lb.version_id, lb.reason
            ));
        }
        let status = bless::BootStatus {
            slot: info.slot.to_uppercase(),
            version: info.version,
            version_id: info.version_id.clone(),
            security_floor: info.stored_floor,
            trial: entry.is_some(),
            tries_left: entry.as_ref().map(|e| e.tries_left),
            blessed: entry.is_none(),
            last_bad,
            development,
        };
        let mut b = Boot {
            info,
            cfg,
            entry,
            esp,
            status,
            started: Instant::now(),
            healthy_since: None,
            done: false,
        };
        match &b.entry {
            Some(e) => console::say(&format!(
                "trial boot of {} ({} tries left): blessing after {} s of healthy services, or rebooting unblessed at {} s",
                e.file, e.tries_left, b.cfg.bless_after_secs, b.cfg.bless_deadline_secs
            )),
            // An already blessed slot: its floor applies.
            None => b.raise_floor(),
        }
        b.publish();
        b
    }

    fn publish(&self) {
        match bless::publish(
            std::path::Path::new(gwos_core::context::RUN_DIR),
            &self.status,
        ) {
            Ok(()) => console::say(&format!(
                "boot.json: {}",
                serde_json::to_string(&self.status).unwrap_or_default()
            )),
            Err(e) => console::say(&format!("boot.json: {e:#}")),
        }
    }

    fn raise_floor(&mut self) {
        if self.info.disk.is_empty() {
            return;
        }
        match bless::raise_floor(&self.info.disk, self.info.manifest_floor, self.info.version) {
            Ok((old, new)) => {
                self.status.security_floor = new;
                if new != old {
                    console::say(&format!("security floor raised from {old} to {new}"));
                }
            }
            Err(e) => console::say(&format!(
                "security floor NOT raised to {}: {e:#}",
                self.info.manifest_floor
            )),
        }
    }

    fn on_ready(&mut self) {
        if self.entry.is_none() {
            console::say("boot blessing: not a counted (trial) boot, nothing to bless");
        }
    }

    fn tick(&mut self, sup: &Supervisor) -> Option<shutdown::Request> {
        if self.done {
            return None;
        }
        let entry = self.entry.clone()?;
        let unhealthy: Vec<String> = sup
            .units
            .iter()
            .filter(|u| u.svc.required && !u.healthy)
            .map(|u| u.svc.name.clone())
            .collect();
        match bless::decide(
            &self.cfg,
            self.started.elapsed(),
            &mut self.healthy_since,
            &unhealthy,
        ) {
            bless::Action::Wait => None,
            bless::Action::Bless => {
                self.done = true;
                match bless::rename_blessed(self.esp.as_ref(), &entry) {
                    Ok(s) => {
                        console::say(&format!(
                            "boot blessing: {s} (services healthy for {} s)",
                            self.cfg.bless_after_secs
                        ));
                        self.status.blessed = true;
                        self.status.trial = false;
                        self.status.tries_left = None;
                        self.raise_floor();
                        self.publish();
                    }
                    Err(e) => console::say(&format!(
                        "boot blessing FAILED: {e:#} (systemd-boot will count this boot as a try)"
                    )),
                }
                None
            }
            bless::Action::GiveUp(reason) => {
                self.done = true;
                let lb = bless::LastBad {
                    slot: self.status.slot.clone(),
                    version_id: self.status.version_id.clone(),
                    reason: reason.clone(),
                };
                if let Err(e) =
                    gwos_core::state::write_json(std::path::Path::new(bless::LAST_BAD), &lb)
                {
                    console::say(&format!("{}: {e:#}", bless::LAST_BAD));
                }
                self.status.last_bad = Some(lb);
                self.publish();
                console::say(&format!(
                    "boot NOT blessed: {reason}; rebooting without blessing ({} tries left for {})",
                    entry.tries_left, entry.file
                ));
                Some(shutdown::Request::Reboot)
            }
        }
    }
}

fn os_version() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("VERSION_ID=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

fn stop(sup: &mut Supervisor, req: shutdown::Request) -> ! {
    console::say(&format!(
        "shutdown ({req:?}): stopping {} services",
        sup.running()
    ));
    sup.stopping = true;
    sup.signal_all(Signal::SIGTERM);
    let until = Instant::now() + GRACE;
    while sup.running() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        reap(sup);
    }
    if sup.running() > 0 {
        console::say(&format!(
            "{} services ignored SIGTERM for {}s: SIGKILL",
            sup.running(),
            GRACE.as_secs()
        ));
        sup.signal_all(Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(300));
        reap(sup);
    }
    shutdown::unmount_all();
    console::say(if req == shutdown::Request::Reboot {
        "rebooting"
    } else {
        "powering off"
    });
    shutdown::halt(req == shutdown::Request::Reboot)
}
