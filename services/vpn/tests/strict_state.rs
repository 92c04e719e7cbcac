//! The vpn's users file is read back from /var: a field we do not know is an
//! error naming it (an older or hand-edited file is not half-understood).

use gwos_vpn::users::{User, Users};

#[test]
fn users_file_with_unknown_top_level_field_is_refused_by_name() {
    let err = serde_json::from_str::<Users>(r#"{"users":{},"version":2}"#)
        .expect_err("unknown field accepted");
    assert!(err.to_string().contains("unknown field `version`"), "{err}");
}

#[test]
fn user_with_unknown_field_is_refused_by_name() {
    let err = serde_json::from_str::<User>(
        r#"{"name":"alice","public_key":"k","address":"10.8.0.2","allowed":[],"created":"t","role":"admin"}"#,
    )
    .expect_err("unknown field accepted");
    assert!(err.to_string().contains("unknown field `role`"), "{err}");
}
