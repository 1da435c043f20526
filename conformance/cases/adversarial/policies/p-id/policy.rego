# P-id: the frontend workload may POST under /api/orders.
package envoy.authz

default allow := false

allow if {
	input.identity.spiffe_id == "spiffe://example.org/ns/prod/sa/frontend"
	input.attributes.request.http.method == "POST"
	input.parsed_path[0] == "api"
	input.parsed_path[1] == "orders"
}
