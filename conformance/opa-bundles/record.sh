#!/usr/bin/env bash
# Bundles both ways, recorded (issue 17): real OPA builds bundles (plain, HS256- and RS256-signed,
# with roots) that arbiter must load; `arbiter build` makes bundles that real OPA must load. Every
# bundle is committed under conformance/fixtures/opa-bundles/ with what OPA answered for each
# input of inputs.json (expected.json); conformance/tests/opa_bundles.rs checks arbiter against it
# in CI, without OPA.
#
#   ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa bash conformance/opa-bundles/record.sh
#
# The reference binary comes from ../shared/tools/build-reference-opa (OPA-Envoy 1.7.1).
set -euo pipefail
cd "$(dirname "$0")/../.."
OPA=${ARBITER_REFERENCE_OPA:-$HOME/.cache/arbiter-ref/opa}
cargo build -q -p arbiter-cli
ARB=target/debug/arbiter
SRC=conformance/opa-bundles/src
OUT=conformance/fixtures/opa-bundles
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
rm -f "$OUT"/*.tar.gz
# The RSA key signs once; only its public half is kept.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/rsa.pem" 2>/dev/null
openssl pkey -in "$work/rsa.pem" -pubout -out "$OUT/rs256.pub.pem"
cp -r "$SRC" "$work/rooted"
echo '{"roots": ["envoy", "authz"]}' > "$work/rooted/.manifest"

"$OPA" build -b "$SRC" -o "$OUT/opa-plain.tar.gz" --revision opa-r1
"$OPA" build -b "$SRC" -o "$OUT/opa-hs256.tar.gz" --revision opa-r2 --signing-key s3cret --signing-alg HS256
"$OPA" build -b "$SRC" -o "$OUT/opa-rs256.tar.gz" --revision opa-r3 --signing-key "$work/rsa.pem" --signing-alg RS256
"$OPA" build -b "$work/rooted" -o "$OUT/opa-roots.tar.gz" --revision opa-r4
"$ARB" build "$SRC" -o "$OUT/arbiter-plain.tar.gz" --revision arb-r1
"$ARB" build "$SRC" -o "$OUT/arbiter-hs256.tar.gz" --revision arb-r2 --signing-key s3cret --signing-alg HS256
"$ARB" build "$SRC" -o "$OUT/arbiter-rs256.tar.gz" --revision arb-r3 --signing-key "$work/rsa.pem" --signing-alg RS256
"$ARB" build "$SRC" -o "$OUT/arbiter-roots.tar.gz" --revision arb-r4 --root envoy --root authz

python3 - "$OPA" "$OUT" conformance/opa-bundles/inputs.json <<'PY'
# Each bundle is served by `opa run --server` (the command that verifies signatures) on a
# loopback port and asked through the Data API.
import json, os, socket, subprocess, sys, time, urllib.request
opa, out, inputs_file = sys.argv[1:]
inputs = json.load(open(inputs_file))
keys = {"hs256": ["--verification-key", "s3cret", "--signing-alg", "HS256"],
        "rs256": ["--verification-key", os.path.join(out, "rs256.pub.pem"), "--signing-alg", "RS256"]}

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def ask(port, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())

version = subprocess.run([opa, "version"], capture_output=True, text=True).stdout.splitlines()[0]
expected = {"recorded_with": version,
            "command": "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa bash conformance/opa-bundles/record.sh",
            "bundles": {}}
for name in sorted(f for f in os.listdir(out) if f.endswith(".tar.gz")):
    path = os.path.join(out, name)
    kind = name.split("-", 1)[1].removesuffix(".tar.gz")
    flags = keys.get(kind, [])
    inspect = json.loads(subprocess.run([opa, "inspect", "-f", "json", path], capture_output=True,
                                        text=True, check=True).stdout)
    port = free_port()
    server = subprocess.Popen([opa, "run", "--server", "--addr", f"127.0.0.1:{port}", "--bundle",
                               path, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                ask(port, "/health")
                break
            except Exception:
                if server.poll() is not None:
                    raise RuntimeError(f"{name}: opa run exited: {server.stderr.read().decode()[-400:]}")
                time.sleep(0.1)
        answers = [ask(port, "/v1/data/envoy/authz/allow", {"input": i}).get("result")
                   for i in inputs]
        data_authz = ask(port, "/v1/data/authz").get("result")
        health = ask(port, "/health?bundles")
    finally:
        server.terminate()
        server.wait()
    expected["bundles"][name] = {
        "revision": inspect["manifest"].get("revision", ""),
        "roots": inspect["manifest"].get("roots", [""]),
        "verification": kind if kind in keys else None,
        "data_authz": data_authz,
        "allow": answers,
        "health_bundles": health,
    }
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=2, sort_keys=True)
    f.write("\n")
print(json.dumps({k: v["allow"] for k, v in expected["bundles"].items()}))
PY
