//! The context init hands to a service's `run`.

use std::path::{Path, PathBuf};

use crate::site::SiteConfig;

/// Default locations on the image.
pub const SITE_CONFIG_PATH: &str = "/etc/gwos/site.toml";
pub const STATE_ROOT: &str = "/var/lib/gwos";
pub const RUN_DIR: &str = "/run/gwos";

/// Everything a service needs from its environment; built by `gwosd run`.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Service name as in the service table (`spa`, `vpn`, ...).
    pub name: String,
    /// The site config (read-only, from the image).
    pub site: SiteConfig,
    /// This service's own writable state directory (`/var/lib/gwos/<name>`).
    pub state_dir: PathBuf,
    /// Directory of the local RPC sockets (`/run/gwos`).
    pub run_dir: PathBuf,
}

impl ServiceContext {
    /// Builds the context for `gwosd run <name>`: the site config from
    /// `config` (default [`SITE_CONFIG_PATH`]), state in `state_dir` (default
    /// `/var/lib/gwos/<name>`, created 0700), sockets in `run_dir` (default
    /// [`RUN_DIR`]).
    pub fn load(
        name: &str,
        config: Option<&Path>,
        state_dir: Option<PathBuf>,
        run_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        use std::os::unix::fs::DirBuilderExt;
        let site = SiteConfig::load(config.unwrap_or(Path::new(SITE_CONFIG_PATH)))?;
        let state_dir = state_dir.unwrap_or_else(|| Path::new(STATE_ROOT).join(name));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .with_context(|| format!("creating state dir {}", state_dir.display()))?;
        Ok(Self {
            name: name.into(),
            site,
            state_dir,
            run_dir: run_dir.unwrap_or_else(|| PathBuf::from(RUN_DIR)),
        })
    }

    /// Path of a service's RPC socket in this context's run dir.
    pub fn socket_path(&self, service: &str) -> PathBuf {
        socket_path(&self.run_dir, service)
    }
}

/// `<run_dir>/<service>.sock`
pub fn socket_path(run_dir: &Path, service: &str) -> PathBuf {
    run_dir.join(format!("{service}.sock"))
}
