//! Owns the nftables table `inet gwos`: the base ruleset init loads at boot and the typed set operations spa, vpn and sessions use, all over netlink.
pub mod vpn;
