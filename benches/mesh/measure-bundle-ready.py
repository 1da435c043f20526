#!/usr/bin/env python3
"""Time from start to the first decision served from a bundle, arbiter beside OPA.

    cargo build --release -p arbiter-cli
    python3 benches/mesh/gen-identities.py 1000000 /tmp/ids1m
    target/release/arbiter build --max-data-file-bytes 1GiB --max-bundle-bytes 1GiB /tmp/ids1m -o /tmp/b1m.tar.gz
    ~/.cache/arbiter-ref/opa build /tmp/ids1m -o /tmp/o1m.tar.gz
    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 benches/mesh/measure-bundle-ready.py \\
        /tmp/b1m.tar.gz /tmp/o1m.tar.gz /tmp/ids1m/input.json [ROUNDS]

Each round (default 2) starts `arbiter serve --bundle` and then `opa run --server --bundle` on
loopback ports it picks, posts the input to the Data API every 50 ms until a result comes back,
prints the time and the server's RSS, and stops the server it started, by its process id (each
start gives up after 120 s)."""

import json
import os
import subprocess
import sys
import time
import urllib.request

from meshlib import ARBITER, free_port, rss_mib


def ready(name, cmd, port, body):
    url = f"http://127.0.0.1:{port}/v1/data/envoy/authz/allow"
    started = time.monotonic()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < 120:
            try:
                req = urllib.request.Request(url, data=body, method="POST")
                with urllib.request.urlopen(req, timeout=5) as r:
                    result = json.load(r).get("result")
                if result is not None:
                    print(f"{name}: ready after {time.monotonic() - started:.2f} s, result "
                          f"{result}, RSS {rss_mib(server.pid):.0f} MiB")
                    return
            except OSError:
                pass
            time.sleep(0.05)
        print(f"{name}: no answer within 120 s")
    finally:
        server.terminate()
        server.wait(timeout=10)


def main():
    ours, theirs, input_file = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    with open(input_file) as f:
        body = json.dumps({"input": json.load(f)}).encode()
    opa = os.environ.get("ARBITER_REFERENCE_OPA")
    for _ in range(rounds):
        port = free_port()
        ready("arbiter", [ARBITER, "serve", "--bundle", ours, "--max-data-file-bytes", "1GiB",
                          "--max-bundle-bytes", "1GiB", "--http-addr", f"127.0.0.1:{port}",
                          "--grpc-addr", f"127.0.0.1:{free_port()}"], port, body)
        if opa:
            port = free_port()
            ready("OPA", [opa, "run", "--server", "--bundle", theirs, "--addr",
                          f"127.0.0.1:{port}"], port, body)


if __name__ == "__main__":
    main()
