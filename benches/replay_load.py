#!/usr/bin/env python3
"""`arbiter replay` over a large decision log recorded through real Envoy.

1. Records: `arbiter serve` on the bundled policies (Rego and CEL, deny-overrides) with a file
   decision log (rotating at 256 MiB; `authorization` is kept so that token rules replay
   exactly, `x-api-key` is erased), Envoy 1.40 in front, and `wrk` sending a mix of requests
   (guest and customer tokens, public reads, orders, admin paths, a missing token, a DELETE)
   until the log holds --events events. Envoy on core 0, arbiter and wrk on core 1, as
   benches/envoy_load.py places them. Every wrk run is bounded by -d.
2. Replays the log with the same policies (every event must be unchanged) and with a
   candidate that takes the `guest` token role away (every guest read must flip to a denial),
   timing each and reading the replay's peak RSS.

Usage: python3 benches/replay_load.py --arbiter target/release/arbiter [--events 1000000]
         [--keep DIR] (keep the recorded log) | [--log FILE] (replay a kept log)
"""

import argparse
import base64
import glob
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from envoy_load import (REPO, Procs, envoy_config, envoy_path, free_port, taskset,  # noqa: E402
                        wait_port)

SECRET = b"arbiter-demo-secret"


def token(role, sub):
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"aud": "shop", "exp": 4102444800, "iss": "https://auth.example.com",
                           "role": role, "sub": sub}).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def lua_script():
    guest, customer = token("guest", "g1"), token("customer", "c1")
    reqs = [
        ("GET", "/api/v1/products", guest),      # allowed (guest reads the catalog)
        ("GET", "/api/v1/products/42", guest),   # allowed
        ("GET", "/api/v1/orders", customer),     # allowed
        ("POST", "/api/v1/orders", customer),    # allowed
        ("GET", "/api/v1/orders", guest),        # denied (guests have no orders)
        ("GET", "/admin/users", customer),       # denied
        ("DELETE", "/api/v1/orders/7", customer),  # denied
        ("GET", "/public/index.html", None),     # allowed
        ("GET", "/api/v1/products", None),       # denied (no token)
    ]
    lines = ["local reqs = {"]
    for method, path, tok in reqs:
        headers = '{["authorization"] = "Bearer %s"}' % tok if tok else "{}"
        lines.append(f'  {{"{method}", "{path}", {headers}}},')
    lines.append("}")
    lines.append("local i = 0")
    lines.append("request = function()")
    lines.append("  i = i + 1")
    lines.append("  local r = reqs[(i % #reqs) + 1]")
    lines.append("  return wrk.format(r[1], r[2], r[3])")
    lines.append("end")
    return "\n".join(lines) + "\n"


def count_lines(paths):
    n = 0
    for p in paths:
        with open(p, "rb") as f:
            while True:
                b = f.read(1 << 24)
                if not b:
                    break
                n += b.count(b"\n")
    return n


def record(args, work):
    log = os.path.join(work, "decisions.log")
    procs = Procs()
    try:
        listen, admin, grpc, http = free_port(), free_port(), free_port(), free_port()
        server = procs.start(taskset(1, [
            args.arbiter, "serve", os.path.join(REPO, "policies"),
            "--grpc-addr", f"127.0.0.1:{grpc}", "--http-addr", f"127.0.0.1:{http}",
            "--decision-log", log, "--decision-log-max-size", "256MiB",
            "--decision-log-max-files", "100", "--decision-log-mask-headers", "x-api-key"]))
        wait_port(grpc, server, "arbiter")
        cfg = os.path.join(work, "envoy.yaml")
        with open(cfg, "w") as f:
            f.write(envoy_config(listen, admin, ("127.0.0.1", grpc)))
        envoy = procs.start(taskset(0, [args.envoy, "-c", cfg, "--concurrency", "1",
                                        "--disable-hot-restart", "-l", "warning"]))
        wait_port(listen, envoy, "envoy")
        script = os.path.join(work, "mix.lua")
        with open(script, "w") as f:
            f.write(lua_script())
        url = f"http://127.0.0.1:{listen}"
        recorded = 0
        while recorded < args.events:
            # Bounded runs until the log holds enough events.
            left = args.events - recorded
            secs = max(2, min(60, int(left / 8000) + 1))
            subprocess.run(taskset(1, ["wrk", "-t1", "-c50", f"-d{secs}s", "-s", script, url]),
                           capture_output=True, timeout=secs + 30, check=True)
            time.sleep(0.5)
            recorded = count_lines(glob.glob(log + "*"))
            print(f"  recorded {recorded} events", flush=True)
    finally:
        procs.stop()
    return log


def replay(args, log, policies, label, work):
    """One replay under GNU time: wall and CPU seconds, and the replay's own peak RSS."""
    stats = os.path.join(work, "time.txt")
    cmd = ["/usr/bin/time", "-o", stats, "-f", "%e %U %S %M",
           args.arbiter, "replay", "--policies", policies, "-f", "json", log]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{label}: exit {out.returncode}: {out.stderr}")
    r = json.loads(out.stdout)
    with open(stats) as f:
        wall, user, system, max_kib = f.read().split()[-4:]
    return r, float(wall), float(user) + float(system), int(max_kib) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arbiter", default=os.path.join(REPO, "target/release/arbiter"))
    ap.add_argument("--envoy", default=None)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--keep", help="keep the recorded log in this folder")
    ap.add_argument("--log", help="replay this recorded log (its rotated set) instead of recording")
    args = ap.parse_args()
    args.envoy = args.envoy or envoy_path()
    work = tempfile.mkdtemp(prefix="arbiter-replay-")
    try:
        if args.log:
            log = args.log
        else:
            print(f"recording {args.events} events through Envoy ...", flush=True)
            log = record(args, work)
        files = sorted(glob.glob(log + "*"))
        size = sum(os.path.getsize(f) for f in files)
        print(f"log: {len(files)} files, {size / 2**20:.0f} MiB", flush=True)
        candidate = os.path.join(work, "candidate")
        shutil.copytree(os.path.join(REPO, "policies"), candidate)
        data_file = os.path.join(candidate, "authz", "data.json")
        with open(data_file) as f:
            data = json.load(f)
        data["token_roles"]["guest"] = []
        with open(data_file, "w") as f:
            json.dump(data, f)
        rows = []
        for label, policies in (("same policies", os.path.join(REPO, "policies")),
                                ("candidate: no guest role", candidate)):
            r, wall, cpu, rss = replay(args, log, policies, label, work)
            rows.append((label, r, wall, cpu, rss))
            print(f"{label}: {r['lines']} lines, compared {r['compared']}, unchanged "
                  f"{r['unchanged']}, new access {r['new_access']}, new denials "
                  f"{r['new_denials']}, unreadable {r['not_replayed']['unreadable']}; "
                  f"{wall:.1f} s wall ({r['lines'] / wall:,.0f} events/s), {cpu:.1f} s CPU, "
                  f"peak RSS {rss:.0f} MiB", flush=True)
        same = rows[0][1]
        if same["new_access"] or same["new_denials"]:
            print("UNEXPECTED: the same policies flipped decisions", flush=True)
        if args.keep and not args.log:
            os.makedirs(args.keep, exist_ok=True)
            for f in files:
                shutil.move(f, args.keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
