#!/usr/bin/env python3
"""RSS of `arbiter serve` (and of OPA, when the reference binary is at hand) after repeated
reloads of the same large set.

    cargo build --release -p arbiter-cli
    python3 benches/mesh/gen-identities.py 100000 /tmp/ids
    [ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa] python3 benches/mesh/measure-reload-rss.py /tmp/ids [RELOADS] [--change]

Starts the server on loopback ports it picks, waits until it answers, then RELOADS times
(default 10) sends SIGHUP, waits for the reload to finish (its reload counter in /metrics) and
reads VmRSS from /proc once it has settled (two readings 1 s apart within 1%). With
`--change`, each reload first rewrites `data.json` with one identity's tenant changed (a new
document each time, so that every reload parses it; the file is restored at the end); without
it the files stay as they are. OPA does not reload on SIGHUP: for OPA it prints the time to
ready and the RSS then. Prints one line per step. Stops the servers it started, by their
process ids; every wait gives up after 60 s."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from meshlib import ARBITER, free_port, rss_mib


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def wait(cond, what):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"gave up waiting for {what}")


def settled_rss(pid):
    """RSS once it stops moving: after a reload the replaced (or refused) set is still being
    freed and its pages handed back; two readings 1 s apart within 1% (at most 30 s)."""
    last = rss_mib(pid)
    for _ in range(30):
        time.sleep(1)
        now = rss_mib(pid)
        if abs(now - last) <= 0.01 * last:
            return now
        last = now
    return last


def reloads_ok(http):
    m = re.search(r'arbiter_policy_reloads_total\{result="ok"\} (\d+)', get(f"http://{http}/metrics"))
    return int(m.group(1)) if m else 0


def changed(original, i):
    """`data.json`'s text with the first identity's tenant set to `tenant-reload-<i>`."""
    data = json.loads(original)
    first = next(iter(data["identities"].values()))
    first["tenant"] = f"tenant-reload-{i}"
    return json.dumps(data, separators=(",", ":"))


def main():
    args = [a for a in sys.argv[1:] if a != "--change"]
    change = "--change" in sys.argv[1:]
    folder = args[0]
    rounds = int(args[1]) if len(args) > 1 else 10
    data_file = os.path.join(folder, "data.json")
    with open(data_file) as f:
        original = f.read()
    http, grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    extra = []
    if os.path.getsize(os.path.join(folder, "data.json")) > 64 << 20:
        extra = ["--max-data-file-bytes", "1GiB"]  # past the default limit (1M identities)
    started = time.monotonic()
    server = subprocess.Popen([ARBITER, "serve", "--policies", folder, "--http-addr", http,
                               "--grpc-addr", grpc] + extra,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait(lambda: get(f"http://{http}/health") is not None, "arbiter to start")
        print(f"arbiter ready after {time.monotonic() - started:.2f} s, RSS {rss_mib(server.pid):.0f} MiB")
        for i in range(1, rounds + 1):
            if change:
                with open(data_file, "w") as f:
                    f.write(changed(original, i))
            before = reloads_ok(http)
            t = time.monotonic()
            server.send_signal(signal.SIGHUP)
            wait(lambda: reloads_ok(http) > before, f"reload {i}")
            took = time.monotonic() - t
            print(f"after reload {i} ({took:.2f} s): RSS {settled_rss(server.pid):.0f} MiB")
    finally:
        server.terminate()
        server.wait(timeout=10)
        if change:
            with open(data_file, "w") as f:
                f.write(original)
    opa = os.environ.get("ARBITER_REFERENCE_OPA")
    if opa:
        port = free_port()
        started = time.monotonic()
        server = subprocess.Popen([opa, "run", "--server", "--addr", f"127.0.0.1:{port}", folder],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(lambda: json.loads(get(f"http://127.0.0.1:{port}/health")) == {}, "OPA to start")
            print(f"OPA ready after {time.monotonic() - started:.2f} s, RSS {rss_mib(server.pid):.0f} MiB")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
