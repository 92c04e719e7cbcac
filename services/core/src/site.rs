//! The site config: one TOML file generated into the image from `image.toml`'s
//! `[site]` table. Each service owns one section and reads it with
//! [`SiteConfig::section`]. The sections are listed once, in [`SECTIONS`]: an
//! unknown section is an error naming it (a typo would otherwise fall back to
//! the defaults silently), and `gwos build` parses every listed section with
//! its owner's own type, so a bad site config fails the build, not the boot.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

/// Every section a site config may have, with the crate that reads it. A new
/// section is added here and to the image tool's check
/// (`image/src/config.rs`, `SITE_CHECKS`).
pub const SECTIONS: &[(&str, &str)] = &[
    ("system", "gwos-init (hostname)"),
    ("network", "gwos-init (the uplink address)"),
    ("firewall", "gwos-netfilter (the base ruleset)"),
    ("spa", "gwos-spa"),
    ("vpn", "gwos-vpn"),
    ("tls-front", "gwos-tls-front"),
    ("control", "gwos-control"),
    (
        "boot",
        "gwos-init (trial boots: blessing window and deadline)",
    ),
    ("spa-grant", "gwos-netfilter (the SPA grant service)"),
    ("logship", "gwos-logship (spool and SIEM)"),
];

#[derive(Debug, Clone, Default)]
pub struct SiteConfig {
    table: toml::Table,
}

impl SiteConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading site config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing site config {}", path.display()))
    }

    /// Parses the file; an unknown section, or a top-level key that is not a
    /// section, is an error naming it.
    pub fn parse(text: &str) -> Result<Self> {
        Self::from_table(text.parse::<toml::Table>()?)
    }

    /// The same checks as [`SiteConfig::parse`], on an already parsed table
    /// (`image.toml`'s `[site]`).
    pub fn from_table(table: toml::Table) -> Result<Self> {
        for (name, value) in &table {
            if !SECTIONS.iter().any(|(known, _)| known == name) {
                let known: Vec<&str> = SECTIONS.iter().map(|(n, _)| *n).collect();
                bail!(
                    "unknown site config section [{name}]; the sections are {}",
                    known.join(", ")
                );
            }
            if !value.is_table() {
                bail!("site config [{name}] must be a section (a table), not a single value");
            }
        }
        Ok(Self { table })
    }

    /// Deserializes section `name`; a missing section yields `T::default()`.
    /// Unknown or ill-typed keys are an error naming the section.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        match self.table.get(name) {
            None => Ok(T::default()),
            Some(v) => v
                .clone()
                .try_into()
                .with_context(|| format!("site config section [{name}]")),
        }
    }

    pub fn raw(&self) -> &toml::Table {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Spa {
        port: u16,
    }

    #[test]
    fn missing_section_is_default_and_bad_key_is_error() {
        let s = SiteConfig::parse("[spa]\nport = 62201\n").unwrap();
        assert_eq!(s.section::<Spa>("spa").unwrap(), Spa { port: 62201 });
        assert_eq!(s.section::<Spa>("vpn").unwrap(), Spa::default());
        let bad = SiteConfig::parse("[spa]\nprot = 1\n").unwrap();
        let err = format!("{:#}", bad.section::<Spa>("spa").unwrap_err());
        assert!(err.contains("[spa]") && err.contains("prot"), "{err}");
    }

    #[test]
    fn unknown_section_is_an_error_naming_it() {
        let err = format!("{:#}", SiteConfig::parse("[sap]\nport = 1\n").unwrap_err());
        assert!(
            err.contains("unknown site config section [sap]") && err.contains("spa"),
            "{err}"
        );
    }

    #[test]
    fn top_level_value_is_an_error_naming_it() {
        let err = format!("{:#}", SiteConfig::parse("spa = 1\n").unwrap_err());
        assert!(err.contains("[spa] must be a section"), "{err}");
    }

    #[test]
    fn every_known_section_parses() {
        let text: String = SECTIONS.iter().map(|(n, _)| format!("[{n}]\n")).collect();
        let site = SiteConfig::parse(&text).expect("all known sections");
        assert_eq!(site.raw().len(), SECTIONS.len());
    }
}
