#!/usr/bin/env python3
"""Record what real OPA decides for 400 generated requests against issue 18's router over
1,000 service packages, for `conformance/tests/mesh_router.rs` to compare arbiter with.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 benches/mesh/record-agreement.py

writes conformance/fixtures/mesh/router-1000.json: the package count, each request as
[service, method, path, principal] (the test builds the same policies with
benches/mesh/gen-router.py's templates, repeated in the test) and OPA's decision for it. The
requests are drawn with a fixed seed: hits on a service's public GET path, hits by its own
caller, misses by other callers, unknown services."""

import json
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))
OUT = os.path.join(REPO, "conformance", "fixtures", "mesh", "router-1000.json")
PACKAGES = 1000
REQUESTS = 400

sys.path.insert(0, os.path.dirname(__file__))
gen = __import__("gen-router")


def requests():
    rng = random.Random("arbiter-mesh-router")
    out = []
    for _ in range(REQUESTS):
        svc = rng.randrange(PACKAGES + PACKAGES // 10)  # a tenth are unknown services
        caller = svc if rng.random() < 0.4 else rng.randrange(PACKAGES)
        method = rng.choice(["GET", "GET", "POST", "DELETE"])
        second = rng.choice(["public", "orders", "public", "admin"])
        out.append([f"s{svc:05d}", method, f"/s{svc:05d}/{second}/1",
                    f"spiffe://cluster.local/ns/default/sa/c{caller:05d}"])
    return out


def main():
    reqs = requests()
    with tempfile.TemporaryDirectory() as d:
        gen.main_args(PACKAGES, d)
        inputs = [gen.envoy_input(path, principal, method) for _, method, path, principal in reqs]
        with open(os.path.join(d, "inputs.json"), "w") as fh:
            json.dump({"requests": inputs}, fh)
        query = "[d | some i; r := data.requests[i]; d := data.envoy.authz.allow with input as r]"
        out = subprocess.run([OPA, "eval", "-f", "json", "-d", os.path.join(d, "router.rego"),
                              "-d", os.path.join(d, "svc"), "-d", os.path.join(d, "inputs.json"),
                              query], capture_output=True, text=True, check=True)
        decisions = json.loads(out.stdout)["result"][0]["expressions"][0]["value"]
    assert len(decisions) == len(reqs)
    version = subprocess.run([OPA, "version"], capture_output=True, text=True).stdout.splitlines()[0]
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump({"recorded_with": version,
                   "command": "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 benches/mesh/record-agreement.py",
                   "packages": PACKAGES,
                   "requests": reqs,
                   "opa": decisions}, fh, indent=0)
        fh.write("\n")
    print(f"{len(reqs)} decisions ({sum(decisions)} allowed) written to "
          f"{os.path.relpath(OUT, REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
