# Attribute-based access control: the caller's workload identity (SPIFFE ID from mTLS), the
# method and path, a claim of the end user's token, and the time of day, together.
#
# Decision path `abac/allow`: serve it with `arbiter serve --path abac/allow`.
#
# Reporting workloads may read `/reports/<department>/...` for an end user whose token
# (header `x-user-token`) says they belong to that department, if the workload is cleared for
# the department (data.abac.workloads, keyed by SPIFFE ID), during business hours (UTC).
package abac

import rego.v1

default allow := false

allow if {
	workload := data.abac.workloads[input.identity.spiffe_id]
	spiffe.match(input.identity.spiffe_id, "spiffe://cluster.local/ns/reporting/sa/*")
	input.attributes.request.http.method in {"GET", "HEAD"}
	input.parsed_path[0] == "reports"
	department := input.parsed_path[1]
	department in workload.departments
	user.department == department
	business_hours
}

user := claims if {
	[valid, _, claims] := io.jwt.decode_verify(input.attributes.request.http.headers["x-user-token"], {
		"secret": data.abac.jwt.secret,
		"iss": data.abac.jwt.issuer,
	})
	valid
}

business_hours if {
	[hour, _, _] := time.clock([time.now_ns(), "UTC"])
	hour >= data.abac.office_hours.start
	hour < data.abac.office_hours.end
}
