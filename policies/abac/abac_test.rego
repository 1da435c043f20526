package abac_test

import rego.v1

import data.abac

finance_reports := "spiffe://cluster.local/ns/reporting/sa/finance-reports"

# 2026-11-26T10:00:00Z and 22:00:00Z, in nanoseconds.
ten_am := 1795687200000000000

ten_pm := 1795730400000000000

token(claims) := io.jwt.encode_sign(
	{"alg": "HS256", "typ": "JWT"},
	claims,
	{"kty": "oct", "k": base64url.encode_no_pad("abac-demo-secret")},
)

request(id, method, path, department) := {
	"identity": {"spiffe_id": id},
	"attributes": {"request": {"http": {
		"method": method,
		"headers": {"x-user-token": token({"iss": "https://sso.example.com", "department": department})},
	}}},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
}

test_cleared_workload_reads_its_department_in_business_hours if {
	abac.allow with input as request(finance_reports, "GET", "/reports/finance/q3", "finance")
		with time.now_ns as ten_am
}

test_the_users_department_must_match if {
	not abac.allow with input as request(finance_reports, "GET", "/reports/finance/q3", "sales")
		with time.now_ns as ten_am
}

test_the_workload_must_be_cleared_for_the_department if {
	not abac.allow with input as request(finance_reports, "GET", "/reports/hr/salaries", "hr")
		with time.now_ns as ten_am
}

test_a_broadly_cleared_workload if {
	abac.allow with input as request("spiffe://cluster.local/ns/reporting/sa/all-reports", "GET", "/reports/hr/salaries", "hr")
		with time.now_ns as ten_am
}

test_not_outside_business_hours if {
	not abac.allow with input as request(finance_reports, "GET", "/reports/finance/q3", "finance")
		with time.now_ns as ten_pm
}

test_read_only if {
	not abac.allow with input as request(finance_reports, "DELETE", "/reports/finance/q3", "finance")
		with time.now_ns as ten_am
}

test_workloads_outside_the_reporting_namespace if {
	not abac.allow with input as request("spiffe://cluster.local/ns/default/sa/finance-reports", "GET", "/reports/finance/q3", "finance")
		with time.now_ns as ten_am
}

test_a_token_from_another_issuer if {
	bad := object.union(
		request(finance_reports, "GET", "/reports/finance/q3", "finance"),
		{"attributes": {"request": {"http": {"headers": {"x-user-token": token({"iss": "https://evil.example.com", "department": "finance"})}}}}},
	)
	not abac.allow with input as bad with time.now_ns as ten_am
}
