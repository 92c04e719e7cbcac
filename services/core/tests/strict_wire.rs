//! Local RPC messages come from another process: a field we do not know is
//! an error naming it, not silently dropped.

use gwos_core::rpc::{Request, Response};

#[test]
fn rpc_request_with_unknown_field_is_refused_by_name() {
    let err = serde_json::from_str::<Request>(r#"{"method":"health","parms":{}}"#)
        .expect_err("unknown field accepted");
    assert!(err.to_string().contains("unknown field `parms`"), "{err}");
}

#[test]
fn rpc_response_with_unknown_field_is_refused_by_name() {
    let err = serde_json::from_str::<Response>(r#"{"ok":true,"reslt":{}}"#)
        .expect_err("unknown field accepted");
    assert!(err.to_string().contains("unknown field `reslt`"), "{err}");
}
