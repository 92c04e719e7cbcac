//! The kernel command line (`/proc/cmdline`): `gwos.slot=`, `gwos.roothash=`,
//! `gwos.on_fail=`, `gwos.test=`.

/// Value of `key=` on the command line (last one wins), if present.
pub fn get(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/proc/cmdline").ok()?;
    parse(&text, key)
}

pub fn parse(text: &str, key: &str) -> Option<String> {
    text.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
        .next_back()
}

/// `gwos.test=a,b` flags (only test images and test boots set them).
pub fn test_flag(flag: &str) -> bool {
    get("gwos.test")
        .map(|v| v.split(',').any(|f| f == flag))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_last_value() {
        let t = "console=ttyS0 gwos.slot=a gwos.roothash=ab ro gwos.slot=b\n";
        assert_eq!(super::parse(t, "gwos.slot").as_deref(), Some("b"));
        assert_eq!(super::parse(t, "gwos.roothash").as_deref(), Some("ab"));
        assert_eq!(super::parse(t, "ro"), None);
        assert_eq!(super::parse(t, "gwos.x"), None);
    }
}
