# Allow only the peer 10.0.0.1 (the connection's address, never a header).
package envoy.authz

default allow := false

allow if input.attributes.source.address.socketAddress.address == "10.0.0.1"
