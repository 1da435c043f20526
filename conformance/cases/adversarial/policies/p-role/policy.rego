# Deny a request whose x-role header carries "admin" among its (comma-separated) values.
package envoy.authz

default allow := false

allow if not admin_role

admin_role if {
	some r in split(input.attributes.request.http.headers["x-role"], ",")
	trim_space(r) == "admin"
}
