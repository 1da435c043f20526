package envoy.authz

default allow := false

allow if data.envoy.roles[input.user] == "admin"

allow if data.grants[input.user] == true
