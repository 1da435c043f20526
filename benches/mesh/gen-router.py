#!/usr/bin/env python3
"""Write a mesh-size Rego policy set in the router shape of issue 18: one rule picks a
service's package by a path segment (`data.envoy.svc[input.parsed_path[1]].allow`), and each of
P services has a package of its own with two rules (a public GET prefix and a caller).

    python3 benches/mesh/gen-router.py P OUT_DIR

writes OUT_DIR/router.rego, OUT_DIR/svc/sNNNNN.rego (one per service) and OUT_DIR/inputs/
(OPA-Envoy inputs for `arbiter bench` and `opa bench`: a hit on the last service, a miss, an
unknown service)."""

import json
import os
import sys

ROUTER = """package envoy.authz

default allow := false

allow if data.envoy.svc[input.parsed_path[0]].allow
"""

SERVICE = """package envoy.svc.s{i:05d}

default allow := false

allow if {{
	input.attributes.request.http.method == "GET"
	input.parsed_path[1] == "public"
}}

allow if input.attributes.source.principal == "spiffe://cluster.local/ns/default/sa/c{i:05d}"
"""


def envoy_input(path, principal, method="POST"):
    segments = [s for s in path.split("/") if s]
    return {
        "attributes": {
            "source": {"principal": principal},
            "request": {"http": {"method": method, "path": path, "headers": {}}},
        },
        "parsed_path": segments,
        "parsed_query": {},
    }


def main():
    main_args(int(sys.argv[1]), sys.argv[2])


def main_args(count, out):
    os.makedirs(os.path.join(out, "svc"), exist_ok=True)
    os.makedirs(os.path.join(out, "inputs"), exist_ok=True)
    with open(os.path.join(out, "router.rego"), "w") as fh:
        fh.write(ROUTER)
    for i in range(count):
        with open(os.path.join(out, "svc", f"s{i:05d}.rego"), "w") as fh:
            fh.write(SERVICE.format(i=i))
    last = f"s{count - 1:05d}"
    inputs = {
        "hit": envoy_input(f"/{last}/orders", f"spiffe://cluster.local/ns/default/sa/c{count - 1:05d}"),
        "miss": envoy_input(f"/{last}/orders", "spiffe://cluster.local/ns/default/sa/other"),
        "unknown": envoy_input("/nosuch/orders", "spiffe://cluster.local/ns/default/sa/c00000"),
    }
    for name, doc in inputs.items():
        with open(os.path.join(out, "inputs", f"{name}.json"), "w") as fh:
            json.dump(doc, fh)


if __name__ == "__main__":
    main()
