//! Packets from our encoder (`gwos knock` = `gwos_spa::client::encode`) are
//! accepted by the real Debian `fwknopd` in `--test` mode (UDP server, in a
//! namespace this test creates); a packet signed with the wrong HMAC key is not.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use gwos_spa::client::{encode, Knock};
use gwos_spa::crypto::b64d_strict;
use gwos_spa::packet::ProtoPort;
use gwos_test_support::*;

const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
const H: &str =
    "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

#[test]
fn fwknopd_accepts_gwos_knock_packets() {
    require_root_and_tools(&["ip", "fwknopd", "socat"]);
    let ns = format!("gwspafd{}", std::process::id());
    let _ns = Netns::new(&[&ns]);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let conf = d.join("fwknopd.conf");
    let access = d.join("access.conf");
    std::fs::write(&conf, format!("ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 62201;\nPCAP_INTF lo;\nFWKNOP_RUN_DIR {};\nENABLE_DIGEST_PERSISTENCE N;\n", d.display())).unwrap();
    std::fs::write(&access, format!("SOURCE ANY\nKEY_BASE64 {K}\nHMAC_KEY_BASE64 {H}\nREQUIRE_USERNAME alice\nREQUIRE_SOURCE_ADDRESS Y\nOPEN_PORTS tcp/443,udp/51820\n")).unwrap();
    for f in [&conf, &access] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let log = d.join("fwknopd.log");
    let mut procs = Procs::default();
    procs.spawn(
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "fwknopd", "--test", "-f", "-i", "lo", "-c",
            ])
            .arg(&conf)
            .arg("-a")
            .arg(&access)
            .arg("-d")
            .arg(d.join("digest.cache"))
            .arg("-p")
            .arg(d.join("fwknopd.pid"))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            )),
    );
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("fwknopd UDP server", Duration::from_secs(10), || {
        read().contains("UDP server")
    });
    std::thread::sleep(Duration::from_millis(300));

    let key = b64d_strict(K).unwrap();
    let hkey = b64d_strict(H).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let knocks = [
        Knock {
            user: "alice".into(),
            allow_ip: "127.0.0.1".parse().unwrap(),
            access: vec![ProtoPort {
                tcp: true,
                port: 443,
            }],
            client_timeout: 0,
            timestamp: now,
        },
        Knock {
            user: "alice".into(),
            allow_ip: "127.0.0.1".parse().unwrap(),
            access: vec![
                ProtoPort {
                    tcp: true,
                    port: 443,
                },
                ProtoPort {
                    tcp: false,
                    port: 51820,
                },
            ],
            client_timeout: 15,
            timestamp: now,
        },
    ];
    let send = |payload: &str, i: usize| {
        let f = d.join(format!("pkt{i}"));
        std::fs::write(&f, payload).unwrap();
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "socat",
            "-u",
            &format!("FILE:{}", f.display()),
            "UDP:127.0.0.1:62201",
        ]);
    };
    for (i, k) in knocks.iter().enumerate() {
        let p = encode(k, &key, Some(&hkey)).unwrap();
        send(&p, i);
        wait_until(
            &format!("fwknopd accepting knock {i}"),
            Duration::from_secs(5),
            || {
                read()
                    .matches("--test mode enabled, skipping firewall manipulation")
                    .count()
                    > i
            },
        );
    }
    // wrong HMAC key: fwknopd must refuse it
    let mut bad_h = hkey.clone();
    bad_h.reverse();
    send(&encode(&knocks[0], &key, Some(&bad_h)).unwrap(), 9);
    wait_until(
        "fwknopd refusing the forged packet",
        Duration::from_secs(5),
        || read().contains("HMAC"),
    );
    assert_eq!(
        read().matches("--test mode enabled").count(),
        knocks.len(),
        "{}",
        read()
    );
    println!("fwknopd log:\n{}", read());
}
