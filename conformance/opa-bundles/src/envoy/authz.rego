package envoy.authz

import data.authz.roles

default allow := false

allow if {
	some role in roles[input.user]
	role == "admin"
}

allow if input.parsed_path[0] == "public"
