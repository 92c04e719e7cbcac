#!/usr/bin/env python3
"""Regenerate the real-client SPA vectors in vectors.json with the stock fwknop client.

Usage (from anywhere; needs the Debian package fwknop-client and python3):

    services/spa/testdata/regen.py            # rewrite vectors.json's "vectors"
    services/spa/testdata/regen.py --check    # then decode every vector with decode.py

Every positive vector is one run of `fwknop` (the command is recorded in the
vector's `client_command`): UDP packets come from `--test -B file`, the TCP
and HTTP transports are captured from a listener on 127.0.0.1 that this
script opens, and `-R` resolves its address from a stub on 127.0.0.1.  The
expected fields are the client's own `-v` dump, plus what follows from the
message (allow_ip, access or command) and the replay-cache key
(b64u(SHA-256(S))).  Nothing leaves loopback.

The other sections (crafted, size-limit and negative vectors, and fwknopd's
log lines) were made once with fwknopd 2.6.10 --test and are carried over
unchanged: regenerating them needs a running fwknopd and hand-built packets.

Timestamps are the clock of the machine that ran this script; the tests turn
the age check off when they replay the vectors.
"""

import argparse
import base64
import hashlib
import http.server
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
import threading

HERE = pathlib.Path(__file__).resolve().parent
VECTORS = HERE / "vectors.json"

# Fixed test keys (never used outside tests): K1/H1 are 32/64 bytes, K2/H2 32/128.
KEYS = {
    "K1": "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=",
    "H1": "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==",
    "K2": "ZFM3QgMqrCx0Qg32wXVKKKBP52ry9R15KNISBy2pQtQ=",
    "H2": "4oC9lnuNTICzPieN1zDz8hNBAJPa77W02Nu2HCTYBVk6SQTWAPwglDGXJDYqalN9O8BwNRMgXIAN6R4E5WgaUsf842/0c3Y4iYQdPNPAYAaJahT2MSLLGuob9dyG+jxFiyyxP4FviaCmRjnD3JhSigDdtFcp7zn3m/RdmyTT/84=",
}

# (id, description, key, hmac key or None, client options, transport, env)
# key is a KEYS name or ("passphrase", text).
CASES = [
    ("p01", "defaults: tcp/443, -a 10.1.2.3, no -U", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3", "udp", {}),
    ("p02", "tcp/22, -a 192.168.10.20, -U alice", "K1", "H1",
     "-A tcp/22 -a 192.168.10.20 -U alice", "udp", {}),
    ("p03", "multi-port, sha512 digest + sha512 HMAC (128-byte HMAC key)", "K2", "H2",
     "--hmac-digest-type sha512 -A udp/53,tcp/8080 -a 172.16.5.4 -m sha512 -U bob", "udp", {}),
    ("p04", "-s (allow IP 0.0.0.0), client timeout -f 60, sha1 digest, sha384 HMAC", "K1", "H1",
     "--hmac-digest-type sha384 -A tcp/443 -s -f 60 -m sha1 -U carol", "udp", {}),
    ("p05", "md5 digest + md5 HMAC, HMAC key longer than the block size", "K2", "H2",
     "--hmac-digest-type md5 -A tcp/443 -a 10.1.2.3 -m md5 -U dave", "udp", {}),
    ("p06", "sha384 digest, sha1 HMAC", "K1", "H1",
     "--hmac-digest-type sha1 -A udp/1194 -a 10.0.0.1 -m sha384 -U erin", "udp", {}),
    ("p07", "sha3_256 digest, sha3_256 HMAC", "K1", "H1",
     "--hmac-digest-type sha3_256 -A tcp/443 -a 10.1.2.3 -m sha3_256 -U frank", "udp", {}),
    ("p08", "sha3_512 digest, sha3_512 HMAC (128-byte key > 72-byte block)", "K2", "H2",
     "--hmac-digest-type sha3_512 -A tcp/443 -a 10.1.2.3 -m sha3_512 -U grace", "udp", {}),
    ("p09", "NAT access, msg type 2", "K1", "H1",
     "-A tcp/2222 -a 10.1.2.3 -N 192.168.1.10:22 -U heidi", "udp", {}),
    ("p10", "NAT access + client timeout 120, msg type 4", "K1", "H1",
     "-A tcp/2222 -a 10.1.2.3 -N 192.168.1.10:22 -f 120 -U ivan", "udp", {}),
    ("p11", "local NAT (--nat-local), msg type 5", "K1", "H1",
     "-A tcp/22 -a 10.1.2.3 --nat-local -U judy", "udp", {}),
    ("p12", "local NAT + client timeout 45, msg type 6", "K1", "H1",
     "-A tcp/22 -a 10.1.2.3 --nat-local -f 45 -U mallory", "udp", {}),
    ("p13", "command message (-C), msg type 0", "K1", "H1",
     "-C 'uname -a' -a 10.1.2.3 -U niaj", "udp", {}),
    ("p14", "AES mode CTR (-M ctr)", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -M ctr -U olivia", "udp", {}),
    ("p14b", "AES mode CTR (-M ctr), multi-port: plaintext spans more blocks", "K2", "H2",
     "--hmac-digest-type sha512 -A tcp/443,udp/51820,tcp/2222 -a 172.16.5.4 -M ctr -U oscar",
     "udp", {}),
    ("p15", "AES mode CFB (-M cfb)", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -M cfb -U olivia", "udp", {}),
    ("p16", "AES mode OFB (-M ofb)", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -M ofb -U olivia", "udp", {}),
    ("p17", "AES mode ECB (-M ecb)", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -M ecb -U olivia", "udp", {}),
    ("p18", "legacy IV mode (-M legacy) with short passphrase (padded with '0' to 16 bytes); "
     "client refuses HMAC in legacy mode", ("passphrase", "legacypw"), None,
     "-A tcp/22 -a 10.1.2.3 -M legacy -U peggy", "udp", {}),
    ("p18b", "legacy IV mode with 32-byte base64 key (client truncates key to 16 bytes)", "K1", None,
     "-A tcp/22 -a 10.1.2.3 -M legacy -U quentin", "udp", {}),
    ("p19", "plain passphrase key (access.conf KEY) instead of KEY_BASE64",
     ("passphrase", "correct horse battery"), "H1",
     "-A tcp/22 -a 10.1.2.3 -U rupert", "udp", {}),
    ("p20", "no HMAC key: packet without HMAC", "K1", None,
     "-A tcp/443 -a 10.1.2.3 -U sybil", "udp", {}),
    ("p21", "non-default destination port -p 40001", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -p 40001 -U trent", "udp", {}),
    ("p22", "SPA over HTTP (-P http): URL-safe base64 in GET path", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -P http -U victor", "http", {}),
    ("p23", "SPA over plain TCP (-P tcp)", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 -P tcp -U walter", "tcp", {}),
    ("p24", "timestamp moved back an hour (--time-offset-minus 3600)", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3 --time-offset-minus 3600 -U xavier", "udp", {}),
    ("p25", "username taken from SPOOF_USER env var; username with '.', '-' and '_'", "K1", "H1",
     "-A tcp/443 -a 10.1.2.3", "udp", {"SPOOF_USER": "bob.smith-01_x"}),
    ("p26", "-R allow-IP resolution (--resolve-http-only against a stub on 127.0.0.1 that "
     "answers 203.0.113.7)", "K1", "H1",
     "-A tcp/443 -R --resolve-http-only --resolve-url http://127.0.0.1:{stub}/myip -U rick",
     "udp", {}),
]

MODES = {"ctr": "CTR", "cfb": "CFB", "ofb": "OFB", "ecb": "ECB", "legacy": "legacy"}


def b64u(raw):
    return base64.b64encode(raw).decode().rstrip("=")


def parse_dump(text):
    """The first 'SPA Field Values' block of `fwknop -v` as a dict."""
    out = {}
    lines = text.splitlines()
    start = lines.index("SPA Field Values:") + 2
    for line in lines[start:]:
        if not line.strip():
            break
        name, _, value = line.partition(":")
        out[name.strip()] = value.strip()
    return out


def null(v):
    return None if v == "<NULL>" else v


def expected_fields(dump, spa):
    message = dump["Message String"]
    msg_type = int(dump["Message Type"].split()[0])
    allow_ip, _, rest = message.partition(",")
    exp = {
        "random_value": dump["Random Value"],
        "username": dump["Username"],
        "timestamp": int(dump["Timestamp"]),
        "version": dump["FKO Version"],
        "message_type": msg_type,
        "message": message,
        "allow_ip": allow_ip,
        "nat_access": null(dump["Nat Access"]),
        "server_auth": null(dump["Server Auth"]),
        "client_timeout": int(dump["Client Timeout"]),
        "digest_type": dump["Digest Type"].split("(")[1].rstrip(")").lower(),
        "digest": dump["SPA Data Digest"],
        "encoded_data": dump["Encoded Data"],
        "hmac": null(dump["HMAC"]),
        "replay_digest": b64u(hashlib.sha256(spa.encode()).digest()),
    }
    if msg_type == 0:
        exp["command"] = rest
    else:
        exp["access"] = rest.split(",")
    return exp


class Stub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"203.0.113.7\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def capture_stream(listener, out):
    conn, _ = listener.accept()
    conn.settimeout(10)
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    out.append(data)


def run_case(case, stub_port, workdir):
    ident, description, key, hmac_key, options, transport, env = case
    options = options.format(stub=stub_port)
    if isinstance(key, tuple):
        key_args = ["--key-rijndael", key[1]]
        keys = {"key_base64": None, "key_passphrase": key[1]}
    else:
        key_args = ["--key-base64-rijndael", KEYS[key]]
        keys = {"key_base64": KEYS[key], "key_name": key}
    if hmac_key:
        key_args += ["--key-base64-hmac", KEYS[hmac_key]]
        keys.update(hmac_key_base64=KEYS[hmac_key], hmac_key_name=hmac_key)
    else:
        keys["hmac_key_base64"] = None
    opts = shlex.split(options)
    mode = MODES.get(opts[opts.index("-M") + 1], "CBC") if "-M" in opts else "CBC"
    keys["encryption_mode"] = mode
    if hmac_key:
        keys["hmac_type"] = (
            opts[opts.index("--hmac-digest-type") + 1] if "--hmac-digest-type" in opts else "sha256"
        )
    else:
        keys["hmac_type"] = None

    spa_file = workdir / f"{ident}.spa"
    argv = ["fwknop", "--no-rc-file", "--no-save-args", "-D", "127.0.0.1", *key_args, *opts,
            "-v", "-B", str(spa_file)]
    listener, captured, thread = None, [], None
    dst_port = int(opts[opts.index("-p") + 1]) if "-p" in opts else 62201
    if transport == "udp":
        argv.append("--test")
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        dst_port = listener.getsockname()[1]
        argv += ["-p", str(dst_port)]
        thread = threading.Thread(target=capture_stream, args=(listener, captured))
        thread.start()
    run_env = {k: v for k, v in os.environ.items() if k != "SPOOF_USER"}
    run_env.update(HOME=str(workdir), **env)
    res = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=30)
    if thread:
        thread.join(15)
        listener.close()
    if res.returncode != 0:
        sys.exit(f"{ident}: fwknop exited {res.returncode}: {res.stderr.strip()}")
    spa = spa_file.read_text().strip()
    datagram = captured[0] if transport != "udp" else spa.encode()
    if transport != "udp" and not captured:
        sys.exit(f"{ident}: nothing captured on 127.0.0.1:{dst_port}")
    dump = parse_dump(res.stdout)
    if dump["Final SPA Data"] != spa:
        sys.exit(f"{ident}: the -B file and the -v dump disagree")
    command = " ".join(shlex.quote(a) for a in argv)
    if env:
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + command
    return {
        "id": ident,
        "description": description,
        "client_command": command.replace(str(workdir) + "/", ""),
        "transport": transport,
        "dst_port": dst_port,
        "keys": keys,
        "datagram_len": len(datagram),
        "datagram_base64": base64.b64encode(datagram).decode(),
        "spa_data": spa,
        "expected": expected_fields(dump, spa),
        "client_dump": {k: dump[k] for k in
                        ("Digest Type", "HMAC Type", "Encryption Type", "Encryption Mode",
                         "Message Type")},
    }


def stub_server():
    # fwknop 2.6.10 fails to resolve a --resolve-url with a five-digit port
    # ("error in getaddrinfo"), so the stub takes the first free four-digit one.
    for port in range(8088, 9999):
        try:
            return http.server.HTTPServer(("127.0.0.1", port), Stub)
        except OSError:
            continue
    sys.exit("no free port in 8088-9998 for the -R stub")


def client_version():
    res = subprocess.run(["fwknop", "--version"], capture_output=True, text=True)
    return res.stdout.strip().splitlines()[0] if res.stdout else "fwknop (version unknown)"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="decode every vector with decode.py (the reference decoder beside this file)")
    a = ap.parse_args()

    doc = json.loads(VECTORS.read_text())
    stub = stub_server()
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        doc["vectors"] = [run_case(c, stub.server_address[1], pathlib.Path(tmp)) for c in CASES]
    stub.shutdown()
    doc["generator"] = f"{client_version()} via services/spa/testdata/regen.py"
    doc["named_keys"] = KEYS
    doc["about"] = (
        "SPA packets for the gwos-spa tests. 'vectors' are made by the stock fwknop client "
        "(regen.py runs it; client_command is the exact command); 'expected' is the client's own "
        "-v field dump plus allow_ip/access/command and replay_digest = b64u(SHA-256(spa_data)), "
        "the fwknopd replay-cache key. The other sections were made once against fwknopd 2.6.10 "
        "--test and are kept as they are. Keys: key_base64 = access.conf KEY_BASE64, "
        "key_passphrase = KEY, hmac_key_base64 = HMAC_KEY_BASE64, hmac_type = HMAC_DIGEST_TYPE, "
        "encryption_mode = ENCRYPTION_MODE. Timestamps are the generating machine's clock; "
        "disable the age check when replaying."
    )
    doc["sections"]["vectors"] = (
        f"{len(doc['vectors'])} packets from the stock client (regen.py). datagram_base64 = the "
        "exact payload (UDP datagram, or the TCP stream / HTTP request captured on 127.0.0.1); "
        "spa_data = S after transport unwrapping."
    )
    VECTORS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(doc['vectors'])} real-client vectors to {VECTORS}")
    if a.check:
        res = subprocess.run([sys.executable, str(HERE / "decode.py"), "--vectors", str(VECTORS)])
        sys.exit(res.returncode)


if __name__ == "__main__":
    main()
