# Deny when the x-user header is "admin"; allow otherwise.
package envoy.authz

default allow := false

allow if input.attributes.request.http.headers["x-user"] != "admin"

allow if not input.attributes.request.http.headers["x-user"]
