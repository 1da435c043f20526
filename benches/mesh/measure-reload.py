#!/usr/bin/env python3
"""How long a policy change takes to decide requests under `arbiter serve --watch`.

    cargo build --release -p arbiter-cli
    python3 benches/mesh/measure-reload.py [ROUNDS]

Starts arbiter on loopback ports it picks, serving a one-file policy with --watch (the default
poll interval of 1 s stays as the safety net), then ROUNDS times (default 20) rewrites the file
to flip the decision and polls the Data API every 2 ms until the answer flips. Prints the
median and the slowest time from the write to the first flipped answer. Stops the server it
started, by its process id; every round gives up after 10 s."""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from meshlib import ARBITER, free_port
POLICY = "package envoy.authz\n\ndefault allow := {}\n"


def decision(http):
    req = urllib.request.Request(f"http://{http}/v1/data/envoy/authz/allow", data=b"{}",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.load(r).get("result")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "p.rego")
        with open(path, "w") as fh:
            fh.write(POLICY.format("false"))
        http = f"127.0.0.1:{free_port()}"
        grpc = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen([ARBITER, "serve", "--policies", d, "--watch",
                                   "--http-addr", http, "--grpc-addr", grpc],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if decision(http) is False:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    sys.exit("arbiter did not start")
                time.sleep(0.05)
            times = []
            value = False
            for _ in range(rounds):
                value = not value
                time.sleep(0.2)
                start = time.monotonic()
                with open(path, "w") as fh:
                    fh.write(POLICY.format("true" if value else "false"))
                while decision(http) is not value:
                    if time.monotonic() - start > 10:
                        sys.exit("a change was not served within 10 s")
                    time.sleep(0.002)
                times.append((time.monotonic() - start) * 1000)
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"{rounds} changes: median {statistics.median(times):.0f} ms, "
          f"slowest {max(times):.0f} ms (write to first changed decision)")


if __name__ == "__main__":
    main()
