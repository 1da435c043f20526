# P-admin (deny-list, bypass-prone by design): deny /admin and below, allow the rest.
package envoy.authz

default allow := false

allow if not admin

admin if input.parsed_path[0] == "admin"
