#!/usr/bin/env python3
"""Records what the reference OPA does with delta bundles (issue 18, item 6), for
cli/tests/bundle.rs (`delta_bundles_apply_as_opa_applies_them`) to compare arbiter with, in CI,
without OPA.

A bundle server on loopback serves the snapshot bundle `bundle/` (roots `envoy`, revision r1)
under the name `b` (deltas/config.yaml), then each delta bundle of deltas/deltas.json in turn
(a `.manifest` and a `patch.json`), with ETags and 304s. After each one, once OPA has asked
again (so it has dealt with it), the data under `envoy`, the active revision and whether OPA
logged a failure are recorded into conformance/fixtures/opa-data-writes/deltas.json.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-data-writes/record-deltas.py
"""
import io, json, os, subprocess, tarfile, tempfile, threading, urllib.request
import http.server

from record import free_port, write_fixture

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "conformance/fixtures/opa-data-writes/deltas.json")
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))


def tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def snapshot():
    files = {}
    src = os.path.join(HERE, "bundle")
    for d, _, names in os.walk(src):
        for n in names:
            p = os.path.join(d, n)
            files[os.path.relpath(p, src)] = open(p, "rb").read()
    return tar(files)


class Server:
    def __init__(self):
        self.current = ("snap", snapshot())
        self.served = None
        self.asked_after = threading.Event()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                etag, body = outer.current
                # Asked again after it was served: the last answer has been dealt with (a
                # bundle that failed is asked for without its ETag, and served again).
                if outer.served == etag:
                    outer.asked_after.set()
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return
                outer.served = etag
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.httpd = http.server.HTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, etag, body):
        self.asked_after.clear()
        self.served = None
        self.current = (etag, body)
        # Served once (200), then asked again: dealt with.
        if not self.asked_after.wait(30):
            raise SystemExit(f"{etag} was not asked for again in 30 s")


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read()).get("result")


def main():
    deltas = json.load(open(os.path.join(HERE, "deltas", "deltas.json")))
    server = Server()
    config = open(os.path.join(HERE, "deltas", "config.yaml")).read().replace(
        "${BUNDLE_SERVER}", f"http://127.0.0.1:{server.port}")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "config.yaml")
        open(cfg, "w").write(config)
        port = free_port()
        log = open(os.path.join(tmp, "opa.log"), "w+")
        opa = subprocess.Popen([OPA, "run", "--server", "--addr", f"127.0.0.1:{port}",
                                "--config-file", cfg], stdout=log, stderr=log)
        try:
            if not server.asked_after.wait(30):
                raise SystemExit("OPA did not load the snapshot in 30 s")
            out = {"command": "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-data-writes/record-deltas.py",
                   "snapshot": {"envoy": get(port, "/v1/data/envoy"),
                                "revision": get(port, "/v1/data/system/bundles/b/manifest/revision")},
                   "deltas": []}
            for d in deltas:
                seen = log.tell()
                body = tar({".manifest": json.dumps(d["manifest"]).encode(),
                            "patch.json": json.dumps(d["patch"]).encode()})
                server.serve(d["name"], body)
                log.seek(seen)
                failures = [json.loads(l)["msg"] for l in log.read().splitlines()
                            if l.startswith("{") and json.loads(l).get("level") == "error"]
                log.seek(0, 2)
                # Applied: the bundle's revision is the delta's. A refused bundle is fetched
                # again (OPA keeps no ETag for it), so a late retry of the previous refusal can
                # be logged in this window too: this delta's refusal is the last one.
                revision = get(port, "/v1/data/system/bundles/b/manifest/revision")
                applied = revision == d["manifest"]["revision"]
                out["deltas"].append({
                    "name": d["name"],
                    "applied": applied,
                    "failure": None if applied else failures[-1] if failures else None,
                    "envoy": get(port, "/v1/data/envoy"),
                    "revision": revision,
                })
        finally:
            opa.terminate()
            opa.wait()
    write_fixture(OUT, out)


if __name__ == "__main__":
    main()
