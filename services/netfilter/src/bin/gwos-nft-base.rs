//! `gwos-nft-base <site.toml>`: loads the base ruleset of table `inet gwos`
//! from a site config, exactly as init does at boot. For host tests (run it
//! with `ip netns exec`) and for operators debugging a dev box.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = (|| -> anyhow::Result<()> {
        let path = args
            .get(1)
            .ok_or_else(|| anyhow::anyhow!("usage: gwos-nft-base <site.toml>"))?;
        let site = gwos_core::SiteConfig::load(std::path::Path::new(path))?;
        let cfg = gwos_netfilter::base::BaseConfig::from_site(&site)?;
        gwos_netfilter::base::load(&cfg)?;
        eprintln!(
            "gwos-nft-base: table inet gwos loaded ({} backend networks)",
            cfg.backend.len()
        );
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("gwos-nft-base: {e:#}");
        std::process::exit(1);
    }
}
