package corpus_test

import data.corpus
import rego.v1

# Passing tests.
test_admin_allowed if corpus.allow with input as {"user": "alice"}

test_public_get if corpus.allow with input as {"method": "GET", "path": "/public/x"}

test_private_denied if not corpus.allow with input as {"method": "GET", "path": "/private"}

test_double if corpus.double(4) == 8

test_levels if {
	corpus.level == "high" with input as {"user": "alice"}
	corpus.level == "low" with input as {"user": "bob"}
}

# `with` on data, on a function of the policy, and on built-ins.
test_with_data if corpus.allow with input as {"user": "carol"} with data.corpus.admins as ["carol"]

test_with_function if corpus.greeting("x") == "hi" with corpus.greeting as mock_greeting

mock_greeting(_) := "hi"

test_with_function_value if corpus.double(1) == 10 with corpus.double as 10

test_with_builtin if corpus.is_weekend with time.weekday as "Sunday"

test_with_builtin_function if {
	corpus.greeting("y") == "mock" with sprintf as mock_sprintf
}

mock_sprintf(_, _) := "mock"

test_with_now if corpus.is_weekend with time.now_ns as 1609545600000000000

# Failing tests.
test_fails_on_purpose if corpus.double(2) == 5

test_undefined_is_failure if corpus.nothing_here

test_denied_user_fails if corpus.allow with input as {"user": "mallory"}

# Errors.
test_error_divide if 1 / 0 == 1

test_error_conflict if corpus_conflict == 1

corpus_conflict := 1 if true

corpus_conflict := 2 if true

test_error_type if to_number("abc") > 1

# Skipped.
todo_test_not_written_yet if false

# Several rules with the same test name: one test (it passes when any body does, as OPA counts).
test_two_bodies if corpus.double(1) == 2

test_two_bodies if corpus.double(1) == 3

# Tests over data sets.
test_each_role if {
	every user in ["alice", "bob"] {
		count(corpus.roles) > 0 with input as {"user": user}
	}
}

test_roles_of_bob if corpus.roles == {"dev"} with input as {"user": "bob"}
