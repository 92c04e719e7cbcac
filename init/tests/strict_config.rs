//! What PID 1 reads from a file or its environment refuses fields it does not
//! know, naming them: the `[system]` site section and the sandbox spec the
//! supervisor hands to `gwosd run`.

use gwos_core::SiteConfig;
use gwos_init::sandbox::Spec;
use gwos_init::stage2::SystemConfig;

#[test]
fn system_section_with_unknown_key_is_refused_by_name() {
    let site = SiteConfig::parse("[system]\nhostnme = \"gw1\"\n").expect("site parses");
    let err = format!(
        "{:#}",
        site.section::<SystemConfig>("system")
            .expect_err("unknown key accepted")
    );
    assert!(err.contains("[system]") && err.contains("hostnme"), "{err}");
}

#[test]
fn sandbox_spec_with_unknown_field_is_refused_by_name() {
    let err = serde_json::from_str::<Spec>(
        r#"{"name":"spa","uid":801,"gid":801,"caps":[],"writable":[],"nofile":64,"seccomp":false}"#,
    )
    .expect_err("unknown field accepted");
    assert!(err.to_string().contains("unknown field `seccomp`"), "{err}");
}
