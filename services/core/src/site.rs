//! The site config: one TOML file generated into the image from `image.toml`'s
//! `[site]` table. Each service owns one section and reads it with
//! [`SiteConfig::section`], so adding a service never touches this crate.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

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

    pub fn parse(text: &str) -> Result<Self> {
        Ok(Self {
            table: text.parse::<toml::Table>()?,
        })
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
}
