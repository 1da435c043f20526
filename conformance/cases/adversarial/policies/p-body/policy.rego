# Allow when the JSON body says {"x": 1} and was not truncated.
package envoy.authz

default allow := false

allow if {
	not input.truncated_body
	input.parsed_body.x == 1
}
