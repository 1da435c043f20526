# The reference policy arbiter serves by default (decision path `envoy/authz/allow`).
#
# It is written for OPA-Envoy's input document, so it runs unchanged under opa-envoy-plugin:
#   - mesh callers are identified by their SPIFFE ID (`attributes.source.principal`, from mTLS)
#     and get permissions through roles (data.authz.principals, data.authz.roles);
#   - end users at the edge present a bearer JWT whose `role` claim maps to the same roles;
#   - a few paths are public.
# Paths are compared segment by segment on `parsed_path`, never as string prefixes, so
# `/api/v1/productsX` does not match a grant on `/api/v1/products`.
package envoy.authz

import rego.v1

default allow := false

http := input.attributes.request.http

# Public, read-only paths.
allow if {
	http.method in {"GET", "HEAD"}
	input.parsed_path[0] == "public"
}

# Mesh callers: the SPIFFE ID of the peer certificate.
allow if {
	caller := data.authz.principals[input.attributes.source.principal]
	tenant_matches(caller)
	some role in caller.roles
	permitted(role)
}

# End users: a valid bearer token.
allow if {
	claims := bearer_claims
	some role in data.authz.token_roles[claims.role]
	permitted(role)
}

permitted(role) if {
	some grant in data.authz.roles[role]
	method_matches(grant.methods)
	path_has_prefix(input.parsed_path, grant.path)
}

method_matches(methods) if "*" in methods

method_matches(methods) if http.method in methods

# `prefix` is a list of segments; "*" matches any one segment.
path_has_prefix(path, prefix) if {
	count(path) >= count(prefix)
	every i, seg in prefix {
		seg in {"*", path[i]}
	}
}

# A caller bound to a tenant may only act for that tenant (header `x-tenant-id`).
tenant_matches(caller) if not caller.tenant

tenant_matches(caller) if caller.tenant == http.headers["x-tenant-id"]

bearer_claims := claims if {
	[scheme, token] := split(http.headers.authorization, " ")
	lower(scheme) == "bearer"
	# Only what looks like a JWS reaches the decoder: garbage is no token, not an error.
	regex.match(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`, token)
	[valid, _, claims] := io.jwt.decode_verify(token, {
		"secret": data.authz.jwt.secret,
		"iss": data.authz.jwt.issuer,
		"aud": data.authz.jwt.audience,
	})
	valid
}
