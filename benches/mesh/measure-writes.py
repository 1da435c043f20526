#!/usr/bin/env python3
"""How long one Data API write takes at mesh size, beside a full reload, for arbiter and OPA
(issue 18, item 6).

    cargo build --release -p arbiter-cli
    python3 benches/mesh/gen-identities.py 1000000 /tmp/ids1m     # and 10000, 100000
    python3 benches/mesh/measure-writes.py /tmp/ids10k /tmp/ids100k /tmp/ids1m [ROUNDS]

For each set, starts `arbiter serve DIR` (and `opa run --server DIR` when
ARBITER_REFERENCE_OPA or ~/.cache/arbiter-ref/opa exists) on a loopback port, then ROUNDS
times (default 30) adds one identity with `PATCH /v1/data/identities` (a JSON Patch `add`)
and times the request to its 204; after each write, a decision for the new identity must be
allowed (the write is visible at once). Then the same for a write that replaces one role's
grants (`PUT /v1/data/roles/reader`, a small object beside the big one). Prints medians and
the slowest, and for arbiter its time to reload the whole set on SIGHUP (the alternative the
write replaces). Stops the servers it started, by their process ids; every wait gives up after
120 s."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

from meshlib import ARBITER, free_port, OPA


def call(port, method, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body.encode(),
                                 method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read()


def wait_ready(port):
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not become ready in 120 s")


def allowed(port, principal):
    inp = {"attributes": {"source": {"principal": principal},
                          "request": {"http": {"method": "GET", "path": "/api/v1/items/7",
                                               "headers": {"x-tenant": "tw"}}}}}
    _, body = call(port, "POST", "/v1/data/envoy/authz/allow", json.dumps({"input": inp}))
    return json.loads(body).get("result") is True


def rounds(port, n):
    add, put = [], []
    for i in range(n):
        principal = f"spiffe://cluster.local/ns/w/sa/written{i}"
        pointer = "/" + principal.replace("~", "~0").replace("/", "~1")
        patch = [{"op": "add", "path": pointer, "value": {"roles": ["reader"], "tenant": "tw"}}]
        t = time.perf_counter()
        status, _ = call(port, "PATCH", "/v1/data/identities", json.dumps(patch))
        add.append(time.perf_counter() - t)
        assert status == 204, status
        assert allowed(port, principal), f"the written identity {principal} is not allowed"
        grants = [{"method": "GET", "path": "/api/*/items/*"}, {"method": "HEAD", "path": f"/r{i}"}]
        t = time.perf_counter()
        status, _ = call(port, "PUT", "/v1/data/roles/reader", json.dumps(grants))
        put.append(time.perf_counter() - t)
        assert status == 204, status
    return add, put


def show(name, xs):
    ms = sorted(x * 1000 for x in xs)
    return f"{name} median {statistics.median(ms):.2f} ms, slowest {ms[-1]:.2f} ms"


def run_arbiter(d, n):
    port, grpc = free_port(), free_port()
    # The 1,000,000-identity data.json (91 MB) is over the default 64 MiB data file limit.
    p = subprocess.Popen([ARBITER, "serve", d, "--http-addr", f"127.0.0.1:{port}",
                          "--grpc-addr", f"127.0.0.1:{grpc}", "--max-data-file-bytes", "256MiB"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port)
        add, put = rounds(port, n)
        # A full reload of the same set, for comparison: SIGHUP until the "reloaded" line.
        reloads = []
        for _ in range(3):
            t = time.perf_counter()
            p.send_signal(signal.SIGHUP)
            while True:
                line = p.stderr.readline()
                if not line:
                    raise SystemExit("arbiter exited")
                if re.search(r"reloaded|reload .* failed", line):
                    break
            reloads.append(time.perf_counter() - t)
            assert "reloaded" in line, line
        # The writes survive the reloads.
        assert allowed(port, "spiffe://cluster.local/ns/w/sa/written0")
        return add, put, reloads
    finally:
        p.terminate()
        p.wait()


def run_opa(d, n):
    port = free_port()
    p = subprocess.Popen([OPA, "run", "--server", "--addr", f"127.0.0.1:{port}", d],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port)
        return rounds(port, n)
    finally:
        p.terminate()
        p.wait()


def main():
    args = sys.argv[1:]
    n = int(args.pop()) if args and args[-1].isdigit() else 30
    for d in args:
        add, put, reloads = run_arbiter(d, n)
        print(f"{d} arbiter: {show('add identity', add)}; {show('put roles', put)}; "
              f"{show('SIGHUP reload', reloads)}", flush=True)
        if os.path.exists(OPA):
            add, put = run_opa(d, n)
            print(f"{d} opa:     {show('add identity', add)}; {show('put roles', put)}", flush=True)


if __name__ == "__main__":
    main()
