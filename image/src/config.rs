//! `image.toml`: what goes into an image and how big its partitions are.
//! Every key is optional; the defaults are the ones in the repository's
//! documented `image.toml` (also embedded here for `gwos build` without
//! `--config`). Unknown keys are an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gwos_core::SiteConfig;
use serde::Deserialize;

pub const DEFAULT_TOML: &str = include_str!("../../image.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub image: Image,
    #[serde(default)]
    pub partitions: Partitions,
    #[serde(default)]
    pub keys: Keys,
    /// Copied as it is into /etc/gwos/site.toml (see services/core).
    #[serde(default)]
    pub site: toml::Table,
    /// Directory relative paths are resolved against (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Image {
    pub version_id: String,
    pub version: u64,
    pub security_floor: u64,
    /// Kernel consoles, each `console=<this>` on the command line; the last
    /// is /dev/console. Default `["tty0", "ttyS0,115200"]`: the screen and
    /// the serial port, serial last so it stays primary.
    pub consoles: Option<Vec<String>>,
    /// One console (older configs); the same as `consoles = [<this>]`.
    pub console: Option<String>,
    pub extra_cmdline: String,
    pub rootfs_dir: String,
    pub erofs_compression: String,
}

impl Default for Image {
    fn default() -> Self {
        Image {
            version_id: "0.1.0".into(),
            version: 1,
            security_floor: 1,
            consoles: None,
            console: None,
            extra_cmdline: String::new(),
            rootfs_dir: "rootfs".into(),
            erofs_compression: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Partitions {
    pub esp_mib: u64,
    pub root_mib: u64,
    pub verity_mib: u64,
    pub state_mib: u64,
}

impl Default for Partitions {
    fn default() -> Self {
        Partitions {
            esp_mib: 128,
            root_mib: 512,
            verity_mib: 64,
            state_mib: 256,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keys {
    /// Release private key (hex seed or PKCS#8 PEM, mode 0600). Empty: dev keys in `<out>/keys/`.
    pub release_private: String,
    /// Extra release public keys to trust (e.g. the next rotation's key).
    pub release_public: Vec<String>,
}

/// The default consoles: the screen, then the serial port (/dev/console, what tests read).
pub const DEFAULT_CONSOLES: [&str; 2] = ["tty0", "ttyS0,115200"];

impl Image {
    /// The consoles in command-line order (the last is /dev/console).
    pub fn console_list(&self) -> Vec<String> {
        match (&self.consoles, &self.console) {
            (Some(v), _) => v.clone(),
            (None, Some(c)) => vec![c.clone()],
            (None, None) => DEFAULT_CONSOLES.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// `console=tty0 console=ttyS0,115200`
    pub fn console_args(&self) -> String {
        self.console_list()
            .iter()
            .map(|c| format!("console={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Config {
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self> {
        let mut c: Config = toml::from_str(text).context("image config")?;
        c.base_dir = base_dir.to_path_buf();
        c.validate()?;
        check_site(&c.site)?;
        Ok(c)
    }

    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading image config {}", p.display()))?;
                let base = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let base = if base.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    base
                };
                Self::parse(&text, &base).with_context(|| format!("in {}", p.display()))
            }
            None => Self::parse(DEFAULT_TOML, &std::env::current_dir()?)
                .context("embedded default image.toml"),
        }
    }

    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn validate(&self) -> Result<()> {
        let i = &self.image;
        if i.version_id.is_empty()
            || !i
                .version_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        {
            bail!("[image] version_id must be non-empty [A-Za-z0-9._-] (it names the UKI file)");
        }
        if i.security_floor > i.version {
            bail!(
                "[image] security_floor ({}) is above version ({})",
                i.security_floor,
                i.version
            );
        }
        if i.consoles.is_some() && i.console.is_some() {
            bail!("[image] set consoles (a list) or console (one), not both");
        }
        let consoles = i.console_list();
        if consoles.is_empty() {
            bail!(
                "[image] consoles is empty: the boot would print nowhere (e.g. [\"ttyS0,115200\"])"
            );
        }
        if let Some(c) = consoles.iter().find(|c| {
            c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b",.:".contains(&b))
        }) {
            bail!("[image] console {c:?}: expected a device and options such as \"ttyS0,115200\" or \"tty0\"");
        }
        if i.extra_cmdline.contains('\n') {
            bail!("[image] extra_cmdline must be one line");
        }
        if !["", "lz4", "lz4hc"].contains(&i.erofs_compression.as_str()) {
            bail!("[image] erofs_compression must be \"\", \"lz4\" or \"lz4hc\"");
        }
        let p = &self.partitions;
        if p.esp_mib < 34 {
            bail!("[partitions] esp_mib must be at least 34 (FAT32 minimum)");
        }
        if p.root_mib == 0 || p.verity_mib == 0 || p.state_mib == 0 {
            bail!("[partitions] sizes must be non-zero");
        }
        Ok(())
    }
}

type SiteCheck = fn(&SiteConfig) -> Result<()>;

/// Each site section with the parser its service runs at boot, so that a
/// site config a service would refuse is refused by `gwos build` instead.
/// Every entry of `gwos_core::site::SECTIONS` has one (checked by a test).
pub const SITE_CHECKS: &[(&str, SiteCheck)] = &[
    ("system", |s| {
        s.section::<gwos_init::stage2::SystemConfig>("system")
            .map(drop)
    }),
    ("network", |s| {
        s.section::<gwos_init::net::NetworkConfig>("network")
            .map(drop)
    }),
    ("firewall", |s| {
        gwos_netfilter::base::BaseConfig::from_site(s)
            .map(drop)
            .context("site config section [firewall]")
    }),
    ("spa", |s| {
        let cfg: gwos_spa::service::SpaConfig = s.section("spa")?;
        gwos_spa::service::build_users(&cfg, &[])
            .map(drop)
            .context("site config section [spa]")
    }),
    ("vpn", |s| {
        let cfg: gwos_vpn::config::VpnConfig = s.section("vpn")?;
        cfg.pool
            .parse::<ipnet::Ipv4Net>()
            .map(drop)
            .with_context(|| format!("site config section [vpn]: pool {:?}", cfg.pool))
    }),
    ("tls-front", |s| {
        s.section::<gwos_tls_front::server::FrontConfig>("tls-front")
            .map(drop)
    }),
    ("control", |s| {
        s.section::<gwos_control::config::ControlConfig>("control")?
            .validate()
            .context("site config section [control]")
    }),
    ("boot", |s| {
        s.section::<gwos_init::bless::BootConfig>("boot")?
            .validate()
            .context("site config section [boot]")
    }),
    ("spa-grant", |s| {
        s.section::<gwos_netfilter::grant::GrantConfig>(gwos_netfilter::grant::SERVICE)
            .map(drop)
    }),
    ("logship", |s| {
        s.section::<gwos_logship::service::LogshipConfig>("logship")
            .map(drop)
    }),
];

/// `[site]` as the gateway will read it: unknown sections and keys, and
/// values a service refuses, are errors naming the section.
pub fn check_site(site: &toml::Table) -> Result<()> {
    let site = SiteConfig::from_table(site.clone()).context("[site]")?;
    for (name, check) in SITE_CHECKS {
        check(&site).with_context(|| format!("[site.{name}] would be refused at boot"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_and_errors_are_clear() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.partitions.root_mib, 512);
        assert!(c.keys.release_private.is_empty());
        let e = format!(
            "{:#}",
            Config::parse("[image]\nverison = 2\n", Path::new(".")).unwrap_err()
        );
        assert!(e.contains("verison"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[partitions]\nesp_mib = 8\n", Path::new(".")).unwrap_err()
        );
        assert!(e.contains("esp_mib"), "{e}");
    }

    #[test]
    fn every_site_section_has_a_check() {
        for (name, owner) in gwos_core::site::SECTIONS {
            assert!(
                SITE_CHECKS.iter().any(|(n, _)| n == name),
                "[{name}] ({owner}) has no check in SITE_CHECKS"
            );
        }
        assert_eq!(SITE_CHECKS.len(), gwos_core::site::SECTIONS.len());
    }

    fn site_error(text: &str) -> String {
        format!("{:#}", Config::parse(text, Path::new(".")).unwrap_err())
    }

    #[test]
    fn unknown_site_section_is_refused_by_name() {
        let e = site_error("[site.sap]\nport = 1\n");
        assert!(e.contains("unknown site config section [sap]"), "{e}");
    }

    #[test]
    fn unknown_site_key_is_refused_by_name() {
        let e = site_error("[site.spa]\nprot = 1\n");
        assert!(e.contains("[site.spa]") && e.contains("prot"), "{e}");
    }

    #[test]
    fn site_value_a_service_refuses_is_refused() {
        let e = site_error("[site.vpn]\npool = \"10.9.0.0/33\"\n");
        assert!(e.contains("[site.vpn]") && e.contains("10.9.0.0/33"), "{e}");
        let e = site_error("[site.network]\naddress = 7\n");
        assert!(e.contains("[site.network]") && e.contains("address"), "{e}");
    }

    #[test]
    fn consoles_default_to_screen_and_serial_with_serial_last() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.image.console_args(), "console=tty0 console=ttyS0,115200");
        let c = Config::parse("[image]\nconsole = \"ttyS1,9600\"\n", Path::new(".")).unwrap();
        assert_eq!(c.image.console_args(), "console=ttyS1,9600");
        let e = format!(
            "{:#}",
            Config::parse("[image]\nconsoles = [\"ttyS0 quiet\"]\n", Path::new(".")).unwrap_err()
        );
        assert!(e.contains("console \"ttyS0 quiet\""), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[image]\nconsoles = []\n", Path::new(".")).unwrap_err()
        );
        assert!(e.contains("consoles is empty"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse(
                "[image]\nconsoles = [\"tty0\"]\nconsole = \"ttyS0\"\n",
                Path::new(".")
            )
            .unwrap_err()
        );
        assert!(e.contains("not both"), "{e}");
    }
}
