# P-host (a deny-list on the host, the shape of CVE-2021-39155): secret.com is refused, every
# other host allowed. Written against OPA-Envoy's field, as a policy ported from OPA would be.
package envoy.authz

default allow := false

allow if input.attributes.request.http.host != "secret.com"
