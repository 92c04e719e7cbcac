//! The table of services `gwosd run <name>` can start. Each entry is a
//! service crate's `run`; the sandbox around it is set up by the supervisor
//! before this is reached.
//!
//! Two built-in services exist only for the QEMU boot suite and are added to
//! the service table only when the kernel command line has
//! `gwos.test=supervisor`: `selftest` (answers `health`, reports its own
//! sandbox on the console) and `selftest-crash` (fails 200 ms after start).

use std::sync::Arc;

use gwos_core::ServiceContext;

type RunFn = fn(ServiceContext) -> anyhow::Result<()>;

/// Every service this binary carries, by the name used in the service table.
pub const SERVICES: &[(&str, RunFn)] = &[
    ("spa", gwos_spa::run),
    ("spa-grant", gwos_netfilter::grant::run),
    ("vpn", gwos_vpn::run),
    ("tls-front", gwos_tls_front::run),
    ("control", gwos_control::run),
    ("update", gwos_update::run),
    ("logship", gwos_logship::run),
    ("selftest", selftest),
    ("selftest-crash", selftest_crash),
];

pub fn lookup(name: &str) -> Option<RunFn> {
    SERVICES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Table entries for the test-only services (uid/gid 899, no capabilities).
pub fn selftest_table() -> Vec<crate::supervisor::Service> {
    let mk = |name: &str, required: bool| {
        let t = format!("[[service]]\nname = \"{name}\"\nuid = 899\ngid = 899\nmemory_max = \"32M\"\npids_max = 16\nrequired = {required}\n");
        crate::supervisor::table::parse(&t)
            .expect("selftest table entry parses")
            .service
            .remove(0)
    };
    vec![mk("selftest", true), mk("selftest-crash", false)]
}

fn status_line(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

fn selftest(ctx: ServiceContext) -> anyhow::Result<()> {
    let etc = std::fs::write("/etc/gwos/selftest", b"x")
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_else(|| "WRITABLE".into());
    let var = std::fs::write("/var/lib/gwos/x", b"x")
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_else(|| "WRITABLE".into());
    let own = std::fs::write(ctx.state_dir.join("probe"), b"x")
        .map(|_| "writable".to_string())
        .unwrap_or_else(|e| e.to_string());
    eprintln!(
        "selftest: uid={} gid={} CapEff={} CapBnd={} CapAmb={} NoNewPrivs={} Seccomp={} write /etc: {etc}; write /var/lib/gwos: {var}; own state dir: {own}",
        status_line("Uid:"), status_line("Gid:"), status_line("CapEff:"), status_line("CapBnd:"), status_line("CapAmb:"), status_line("NoNewPrivs:"), status_line("Seccomp:")
    );
    // The allowlist at work: a NEVER syscall and an unlisted one fail with EPERM, a listed one works.
    eprintln!("selftest: seccomp probe: {}", crate::seccomp::probe());
    let path = ctx.socket_path(&ctx.name);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handler: gwos_core::rpc::Handler = Arc::new(|req, _peer| match req.method.as_str() {
        "health" => gwos_core::rpc::Response::ok(
            serde_json::json!({"healthy": true, "service": "selftest"}),
        ),
        m => gwos_core::rpc::Response::err(format!("unknown method {m}")),
    });
    rt.block_on(gwos_core::rpc::serve(&path, vec![0], handler))
}

fn selftest_crash(_ctx: ServiceContext) -> anyhow::Result<()> {
    std::thread::sleep(std::time::Duration::from_millis(200));
    anyhow::bail!("selftest-crash: failing on purpose (test image)")
}
