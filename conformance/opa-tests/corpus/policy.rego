package corpus

import rego.v1

default allow := false

allow if {
	input.user in data.corpus.admins
}

allow if {
	input.method == "GET"
	startswith(input.path, "/public/")
}

double(x) := x * 2

greeting(name) := sprintf("hello, %s", [name])

is_weekend if time.weekday(time.now_ns()) in {"Saturday", "Sunday"}

roles contains r if some r in data.corpus.user_roles[input.user]

level := "high" if count(roles) > 1

else := "low"
