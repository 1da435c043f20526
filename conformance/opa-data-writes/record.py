#!/usr/bin/env python3
"""Records what the reference OPA answers to the Data API's writes (PUT, PATCH with JSON Patch,
DELETE on /v1/data) and to the reads and decisions between them, for
cli/tests/data_writes.rs to compare arbiter with, in CI, without OPA (issue 18, item 6).

Two setups, each a fresh server: `folder` (`opa run --server folder/`, data writable
everywhere) and `bundle` (`opa run --server --bundle bundle`, whose manifest claims the root
`envoy`). The requests of requests.json are sent in order; each answer's status and JSON body
(the `decision_id` removed) is written to conformance/fixtures/opa-data-writes/answers.json.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-data-writes/record.py

The reference binary comes from ../shared/tools/build-reference-opa (OPA-Envoy 1.7.1).
"""
import json, os, subprocess, sys, time, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "benches"))
from envoy_load import free_port  # noqa: E402
OUT = os.path.join(ROOT, "conformance/fixtures/opa-data-writes/answers.json")
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))
SETUPS = {"folder": ["folder"], "bundle": ["--bundle", "bundle"]}


def send(port, req):
    r = urllib.request.Request(
        f"http://127.0.0.1:{port}{req['path']}",
        data=req.get("body", "").encode() if "body" in req else None,
        method=req["method"],
        headers=req.get("headers", {}),
    )
    try:
        with urllib.request.urlopen(r, timeout=5) as a:
            status, body = a.status, a.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    body = json.loads(body) if body.strip() else None
    if isinstance(body, dict):
        body.pop("decision_id", None)
    return {"status": status, "body": body}


def main():
    requests = json.load(open(os.path.join(HERE, "requests.json")))
    out = {"recorded_with": "OPA-Envoy 1.7.1 (opa run --server)",
           "command": "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-data-writes/record.py"}
    for name, args in SETUPS.items():
        port = free_port()
        opa = subprocess.Popen([OPA, "run", "--server", "--addr", f"127.0.0.1:{port}", *args],
                               cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            out[name] = [dict(request=r, answer=send(port, r)) for r in requests[name]]
        finally:
            opa.terminate()
            opa.wait()
    write_fixture(OUT, out)


def write_fixture(path, doc):
    """Write a recording (indented JSON, a final newline) and say where."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
