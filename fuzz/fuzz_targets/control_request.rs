//! Control channel request parser and validators: arbitrary bytes as the
//! request body of every command, and as an approval object and key line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let commands = gwos_control::command::Command::ALL;
    let command = commands[sel as usize % commands.len()];
    if let Ok(env) =
        gwos_control::request::parse_envelope(body, gwos_control::request::DEFAULT_MAX_REQUEST)
    {
        if let Ok(p) = command.validate(&env.params, 1_700_000_000) {
            assert_eq!(p.command(), command);
            let _ = gwos_control::request::redact(&p.to_value());
        }
        let redacted =
            gwos_control::request::redact(&serde_json::Value::Object(env.params.clone()));
        assert!(!redacted.to_string().is_empty());
        if let Some(a) = &env.approval {
            if let Ok(tok) = gwos_control::approval::parse(a) {
                let subject = gwos_control::approval::Subject {
                    command: command.name(),
                    requester: &tok.requester,
                    params: &env.params,
                    trace_id: "t",
                };
                let _ = gwos_control::approval::verify(&tok, &[0u8; 32], &subject, 1_700_000_000);
            }
        }
        let _ = gwos_control::approval::canonical(&serde_json::Value::Object(env.params));
    }
    if let Ok(s) = std::str::from_utf8(body) {
        let _ = gwos_control::keys::parse_ed25519_line(s);
        let _ = gwos_control::request::endpoint("f", s);
        let _ = gwos_control::request::cidr("f", s);
    }
});
