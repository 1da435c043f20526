package envoy.authz_test

import rego.v1

import data.envoy.authz

frontend := "spiffe://cluster.local/ns/default/sa/frontend"

check(method, path, principal, headers) := {
	"attributes": {
		"source": {"principal": principal},
		"request": {"http": {"method": method, "path": path, "headers": headers}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

customer_token := io.jwt.encode_sign(
	{"alg": "HS256", "typ": "JWT"},
	{"iss": "https://auth.example.com", "aud": "shop", "role": "customer", "exp": 4102444800},
	{"kty": "oct", "k": base64url.encode_no_pad("arbiter-demo-secret")},
)

test_public_reads if {
	authz.allow with input as check("GET", "/public/hello", "", {})
}

test_public_is_read_only if {
	not authz.allow with input as check("POST", "/public/hello", "", {})
}

test_frontend_reads_products_for_its_tenant if {
	authz.allow with input as check("GET", "/api/v1/products", frontend, {"x-tenant-id": "acme"})
}

test_frontend_not_for_another_tenant if {
	not authz.allow with input as check("GET", "/api/v1/products", frontend, {"x-tenant-id": "globex"})
}

test_grants_match_whole_segments if {
	not authz.allow with input as check("GET", "/api/v1/productsX", frontend, {"x-tenant-id": "acme"})
}

test_admin_everywhere if {
	authz.allow with input as check("DELETE", "/anything", "spiffe://cluster.local/ns/ops/sa/admin", {})
}

test_customer_token_orders if {
	authz.allow with input as check("POST", "/api/v1/orders", "", {"authorization": concat(" ", ["Bearer", customer_token])})
}

test_customer_token_cannot_delete if {
	not authz.allow with input as check("DELETE", "/api/v1/orders", "", {"authorization": concat(" ", ["Bearer", customer_token])})
}

test_nobody_else if {
	not authz.allow with input as check("GET", "/api/v1/products", "", {})
}
