#!/usr/bin/env python3
"""Write an RBAC/ABAC policy set in the style of issue 18's identity measurements: N SPIFFE
identities, each with roles and a tenant, roles granting methods on path globs.

    python3 benches/mesh/gen-identities.py N OUT_DIR

writes OUT_DIR/authz.rego, OUT_DIR/data.json (about 0.11 MB per 1,000 identities) and
OUT_DIR/input.json (an OPA-Envoy input of the last identity, allowed)."""

import json
import os
import sys

POLICY = """package envoy.authz

default allow := false

identity := data.identities[input.attributes.source.principal]

allow if {
	identity.tenant == input.attributes.request.http.headers["x-tenant"]
	some role in identity.roles
	some grant in data.roles[role]
	grant.method == input.attributes.request.http.method
	glob.match(grant.path, ["/"], input.attributes.request.http.path)
}
"""

ROLES = {
    "reader": [{"method": "GET", "path": "/api/*/items/*"}],
    "writer": [{"method": "POST", "path": "/api/*/items/*"}, {"method": "PUT", "path": "/api/*/items/*"}],
    "admin": [{"method": "DELETE", "path": "/api/**"}],
}


def principal(i):
    return f"spiffe://cluster.local/ns/ns{i % 50}/sa/svc{i:07d}"


def main():
    n, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    names = list(ROLES)
    identities = {
        principal(i): {"roles": [names[i % 3], names[(i + 1) % 3]], "tenant": f"t{i % 100}"}
        for i in range(n)
    }
    with open(os.path.join(out, "authz.rego"), "w") as f:
        f.write(POLICY)
    with open(os.path.join(out, "data.json"), "w") as f:
        json.dump({"identities": identities, "roles": ROLES}, f, separators=(",", ":"))
    last = n - 1
    role = names[last % 3]
    method = ROLES[role][0]["method"]
    with open(os.path.join(out, "input.json"), "w") as f:
        json.dump({
            "attributes": {
                "source": {"principal": principal(last)},
                "request": {"http": {"method": method, "path": "/api/v1/items/7",
                                     "headers": {"x-tenant": f"t{last % 100}"}}},
            },
            "parsed_path": ["api", "v1", "items", "7"],
            "parsed_query": {},
        }, f)


if __name__ == "__main__":
    main()
