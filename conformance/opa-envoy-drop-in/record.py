#!/usr/bin/env python3
"""Records what the reference OPA-Envoy answers in the drop-in scenario (issue 25), for
cli/tests/opa_envoy_drop_in.rs to compare arbiter with, in CI, without OPA:

  - real OPA builds the two bundles: `roles` signed with `opa build --signing-key` (kid
    `default`; the configuration names the key `global_key`) and `meta` unsigned;
  - a bundle server on loopback that demands `Authorization: Bearer <token>` and is down (503)
    at first;
  - OPA-Envoy started with the Deployment's command line (`run --server --config-file=...
    --addr=... --diagnostic-addr=... --ignore=.* <the quick start's policy.rego>`) and
    config.yaml, unchanged but for the ports (given through OPA's ${VAR} substitution);
  - a real Envoy 1.40 in front of it and an upstream that answers 200;
  - /health, /health?bundles, /health?plugins on the diagnostic address before and after the
    bundle server comes up; the status Envoy answers to each request of requests.json; the
    console decision-log lines; what the bundle server saw.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-envoy-drop-in/record.py

The reference binary comes from ../shared/tools/build-reference-opa (OPA-Envoy 1.7.1). The
policy is read from ../shared/conformance/opa-envoy (ARBITER_OPA_ENVOY_FIXTURES overrides), not
copied into the project.
"""
import base64, hashlib, hmac, http.server, json, os, shutil, signal, subprocess
import sys, tempfile, threading, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "conformance/fixtures/opa-envoy-drop-in")
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))
SHARED = os.environ.get("ARBITER_OPA_ENVOY_FIXTURES",
                        os.path.join(ROOT, "..", "shared", "conformance", "opa-envoy"))
POLICY = os.path.join(SHARED, "extracted", "quick_start-policy.rego")
TOKEN = "drop-in-bundle-token"
# The Envoy configuration of the load harness (ext_authz in front of a direct 200), with the
# request body sent, as the quick start's Envoy sends it.
sys.path.insert(0, os.path.join(ROOT, "benches"))
from envoy_load import envoy_config, envoy_path, free_port  # noqa: E402
COMMAND = "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-envoy-drop-in/record.py"


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def send_raw(port, raw):
    """Send one HTTP/1.1 request as written and read the answer to its end."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw.encode())
        while s.recv(65536):
            pass


def normalize(v, key=None):
    """What differs from run to run, replaced: ports, request ids, times (the same rules as
    cli/tests/opa_envoy_drop_in.rs's `normalize`)."""
    import re
    if key == "time":
        return "<time>"
    if isinstance(v, dict):
        return {k: normalize(x, k) for k, x in v.items()}
    if isinstance(v, list):
        return [normalize(x, key) for x in v]
    if key == "portValue":
        return "<port>"
    if key in ("id", "x-request-id"):
        return "<id>"
    if isinstance(v, str):
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", v)
    return v


def jwt(claims):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(b"secret", f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def send(port, method, path, headers, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=body.encode() if body else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    procs = []
    try:
        # The bundles, built by real OPA.
        subprocess.run([OPA, "build", "-b", os.path.join(HERE, "roles-src"), "-o", os.path.join(OUT, "roles.tar.gz"),
                        "--revision", "roles-1", "--signing-key", "s3cret", "--signing-alg", "HS256"], check=True)
        subprocess.run([OPA, "build", "-b", os.path.join(HERE, "meta-src"), "-o", os.path.join(OUT, "meta.tar.gz"),
                        "--revision", "meta-1"], check=True)
        bundles = {f"/bundles/{n}": open(os.path.join(OUT, f"{n}.tar.gz"), "rb").read() for n in ("roles", "meta")}

        up = threading.Event()
        seen = []

        class Bundles(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                auth = self.headers.get("Authorization")
                seen.append({"path": self.path, "authorization": auth,
                             "if_none_match": self.headers.get("If-None-Match")})
                if auth != f"Bearer {TOKEN}":
                    self.send_response(401); self.end_headers(); return
                if not up.is_set():
                    self.send_response(503); self.end_headers(); return
                body = bundles.get(self.path)
                if body is None:
                    self.send_response(404); self.end_headers(); return
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304); self.end_headers(); return
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bundles)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        bundle_port = server.server_address[1]

        grpc, addr, diag, listen, admin = (free_port() for _ in range(5))
        env = dict(os.environ, BUNDLE_SERVER=f"http://127.0.0.1:{bundle_port}", BUNDLE_TOKEN=TOKEN,
                   GRPC_ADDR=f"127.0.0.1:{grpc}")
        # The Deployment's command line, with loopback ports.
        args = ["run", "--server", f"--config-file={os.path.join(HERE, 'config.yaml')}",
                f"--addr=127.0.0.1:{addr}", f"--diagnostic-addr=127.0.0.1:{diag}", "--ignore=.*", POLICY]
        console = open(os.path.join(work, "opa.stdout"), "w")
        opa = subprocess.Popen([OPA] + args, env=env, stdout=console, stderr=subprocess.STDOUT)
        procs.append(opa)
        for _ in range(100):
            try:
                if get(diag, "/health")[0] == 200:
                    break
            except Exception:
                time.sleep(0.1)
        health = {"before": {}, "after": {}}
        for q in ("/health", "/health?bundles", "/health?plugins"):
            health["before"][q] = dict(zip(("status", "body"), get(diag, q)))
        up.set()
        t0 = time.time()
        while get(diag, "/health?bundles")[0] != 200:
            if time.time() - t0 > 30:
                raise RuntimeError("bundles did not activate")
            time.sleep(0.1)
        activated_after = round(time.time() - t0, 1)
        for q in ("/health", "/health?bundles", "/health?plugins"):
            health["after"][q] = dict(zip(("status", "body"), get(diag, q)))

        with open(os.path.join(work, "envoy.yaml"), "w") as f:
            f.write(envoy_config(listen, admin, ("127.0.0.1", grpc), with_body=True))
        envoy = subprocess.Popen([envoy_path(), "-c", os.path.join(work, "envoy.yaml"), "--concurrency", "1",
                                  "--disable-hot-restart", "-l", "warning"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(envoy)
        for _ in range(200):
            try:
                if get(admin, "/ready")[0] == 200:
                    break
            except Exception:
                pass
            time.sleep(0.1)

        requests = json.load(open(os.path.join(HERE, "requests.json")))
        tokens = {name: jwt(claims) for name, claims in requests["tokens"].items()}
        statuses = []
        for r in requests["requests"]:
            headers = dict(r.get("headers", {}))
            if r.get("token"):
                headers["Authorization"] = f"Bearer {tokens[r['token']]}"
            if r.get("body") is not None:
                headers["Content-Type"] = "application/json"
            statuses.append(send(listen, r["method"], r["path"], headers,
                                 json.dumps(r["body"]) if r.get("body") is not None else None))
        # Input parity (issue 17, item 6): raw requests, byte for byte as the test sends them.
        for r in requests["parity"]:
            send_raw(listen, r["raw"])
        time.sleep(1)
        # Seen polls with the ETag; then stop.
        polls_with_etag = sorted({s["path"] for s in seen if s["if_none_match"]})
        opa.send_signal(signal.SIGTERM)
        opa.wait(timeout=20)
        console.close()
        events = []
        for line in open(os.path.join(work, "opa.stdout")):
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("msg") == "Decision Log" and v.get("path") == "envoy/authz/allow":
                events.append(v)
        if len(events) != len(statuses) + len(requests["parity"]):
            raise RuntimeError(f"{len(events)} decision events for {len(statuses)} requests")
        parity = [{"input": normalize(e.get("input")), "result": e.get("result"), "error": e.get("error")}
                  for e in events[len(statuses):]]
        events = events[:len(statuses)]
        keep = lambda e: {
            "fields": sorted(e.keys()),
            "path": e["path"], "result": e.get("result"), "bundles": e.get("bundles"),
            "labels": {k: v for k, v in e["labels"].items() if k not in ("id", "version")},
            "label_keys": sorted(e["labels"].keys()),
            "level": e["level"], "msg": e["msg"], "type": e["type"],
            "method": e["input"]["attributes"]["request"]["http"]["method"],
            "request_path": e["input"]["attributes"]["request"]["http"]["path"],
            "metrics_keys": sorted(e.get("metrics", {}).keys()),
        }
        version = subprocess.run([OPA, "version"], capture_output=True, text=True).stdout.splitlines()[0]
        expected = {
            "recorded_with": version, "command": COMMAND,
            "deployment_args": ["run", "--server", "--config-file=<config.yaml>", "--addr=127.0.0.1:<port>",
                                "--diagnostic-addr=127.0.0.1:<port>", "--ignore=.*", "<quick_start-policy.rego>"],
            "health": health,
            "bundles_activated_within_seconds": activated_after,
            "statuses": statuses,
            "events": [keep(e) for e in events],
            "parity": parity,
            "bundle_server": {
                "paths": sorted({s["path"] for s in seen}),
                "authorizations": sorted({s["authorization"] or "" for s in seen}),
                "polled_with_etag": polls_with_etag,
            },
        }
        with open(os.path.join(OUT, "expected.json"), "w") as f:
            json.dump(expected, f, indent=2, sort_keys=True)
            f.write("\n")
        print(json.dumps({"statuses": statuses, "health": health}, indent=1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
