#!/usr/bin/env python3
"""Generate the Rego differential corpus and record what real OPA answers for each case.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-diff/record.py

writes conformance/cases/opa-diff/corpus.jsonl: one case per line, each with its query (and
modules, data, input when it has them) and `opa`, the JSON `opa eval -f json` printed for it
(errors keep `code`, `message` and `location`; OPA's type-checker `details` are dropped).
`cargo test -p arbiter-cli --test opa_diff` compares arbiter with the recording; CI never
needs OPA. The reference binary comes from ../shared/tools/build-reference-opa (OPA-Envoy
1.7.1, the whole `opa` CLI).

Cases:
- built-ins: for every built-in in OPA's capabilities that arbiter also has (a probe call
  through `arbiter eval` must not say "could not find function" or "undefined function"),
  argument sets drawn from
  pools by the declared argument types, with edge values (empty and unicode strings, big,
  negative and fractional numbers, -0, nested objects, sets) and domain values for built-ins
  that parse something (CIDRs, regexes, globs, times, durations, versions, units, base64,
  JSON, YAML, URLs, JWTs, UUIDs), plus wrong types that must be errors. Deterministic: a fixed
  seed per built-in.
- operators: arithmetic, comparison and set operators over the same pools.
- language: comprehensions, some/every, with, else, partial sets and objects, functions,
  refs, `:=` bindings in queries, string and number edge cases.
- the bundled policies' tests: every `test_` rule of policies/*/ *_test.rego as a query.
Built-ins with side effects or non-deterministic answers are left out (listed in SKIP).
"""

import concurrent.futures
import hashlib
import hmac
import base64
import json
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "conformance", "cases", "opa-diff", "corpus.jsonl")
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))
ARBITER = os.environ.get("ARBITER_BIN", os.path.join(REPO, "target", "debug", "arbiter"))

# Side effects, randomness, the clock, tracing, and OPA internals.
SKIP = {
    "http.send", "net.lookup_ip_addr", "opa.runtime", "rand.intn", "time.now_ns",
    "uuid.rfc4122", "trace", "print", "internal.print", "internal.member_2",
    "internal.member_3", "internal.test_case", "rego.metadata.chain", "rego.metadata.rule",
    "io.jwt.encode_sign", "io.jwt.encode_sign_raw", "crypto.parse_private_keys",
    "crypto.x509.parse_keypair", "crypto.x509.parse_rsa_private_key",
    # Operators as functions: covered by the infix cases below.
    "assign", "eq", "equal", "neq", "gt", "gte", "lt", "lte", "plus", "minus", "mul", "div",
    "rem", "and", "or", "walk",
}

STRS = ['""', '"abc"', '"Hello, World"', '"héllo wörld"', '"a.b.c"', '"  pad  "', '"🙂x"',
        '"123"', '"-1.5"', '"a,b,,c"', '"/api/v1/items"', '"%41%zz"', '"true"', '"ABC def"',
        '"x\\ny"', '"a\\u0000b"']
NUMS = ["0", "1", "-1", "2.5", "-0", "1e3", "9007199254740993", "37037036703703703670",
        "3.0", "-7.25", "0.1", "100", "2", "-3"]
BOOLS = ["true", "false"]
STR_ARRAYS = ['[]', '["a", "b"]', '["b", "a", "b"]', '["x"]', '["", "é"]', '["a.b", "c"]']
NUM_ARRAYS = ['[]', '[1, 2, 3]', '[3, 1, 2]', '[2.5, -1]', '[0]', '[1, 1, 1]']
ANY_ARRAYS = STR_ARRAYS[:3] + NUM_ARRAYS[:3] + ['[1, "a", null]', '[[1], [2, 3]]',
                                                '[{"a": 1}, true]']
STR_SETS = ['set()', '{"a", "b"}', '{"x"}', '{"", "é", "z"}']
NUM_SETS = ['set()', '{1, 2, 3}', '{2.5}', '{0, -1}']
ANY_SETS = STR_SETS[:2] + NUM_SETS[:2] + ['{1, "a", null}', '{[1], {"k": "v"}}']
OBJS = ['{}', '{"a": 1}', '{"a": {"b": [1, 2]}, "c": "d"}', '{"x": null, "y": true}',
        '{1: "one", "1": "uno"}', '{"a": "x", "b": "y"}']
STR_OBJS = ['{}', '{"a": "x", "b": "y"}', '{"q": "1 2", "r": "é&="}']
ANY = ['null', 'true', '"s"', '0', '-2.5', '[]', '{}', 'set()', '[1, "a"]', '{"k": [1]}',
       '{"a", 1}']

def jwt_hs256(payload, secret="secret", header=None):
    h = header or {"alg": "HS256", "typ": "JWT"}
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    signing = enc(json.dumps(h, separators=(",", ":")).encode()) + "." + \
        enc(json.dumps(payload, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + enc(sig)

TOKENS = [json.dumps(t) for t in [
    jwt_hs256({"sub": "alice", "exp": 4102444800, "aud": "api"}),
    jwt_hs256({"sub": "bob", "nbf": 4102444800}),
    jwt_hs256({"sub": "carol"}, secret="other"),
    "not.a.token", "", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
]]

# Domain values for built-ins that parse their string arguments.
DOMAIN = {
    "regex": ['"^a.*"', '"[0-9]+"', '"(a|b)c"', '"\\\\d{2}"', '"x*"', '"("', '""', '"(?i)abc"',
              '"^/api/[^/]+$"'],
    "re_match": ['"^a.*"', '"[0-9]+"', '"("', '""'],
    "glob": ['"*.example.com"', '"api.*"', '"a?c"', '"{a,b}*"', '"[a-c]x"', '"**"', '"*"',
             '"a.b.c"', '"x.example.com"', '"[z"'],
    "net": ['"10.0.0.0/8"', '"10.1.2.3"', '"192.168.0.0/24"', '"::1"', '"2001:db8::/32"',
            '"10.0.0.0/33"', '"not-an-ip"', '"172.16.5.4/12"', '"192.168.0.17"',
            '"10.0.0.0/30"'],
    "time.parse_rfc3339_ns": ['"2021-01-01T00:00:00Z"', '"2006-01-02T15:04:05.999999999+07:00"',
                              '"2021-13-01T00:00:00Z"', '"1970-01-01T00:00:00Z"', '"2021-01-01"'],
    "time.parse_ns": ['"2006-01-02"', '"RFC3339"', '"Jan 2 2006"', '"2021-03-04"',
                      '"2021-01-01T00:00:00Z"', '"Mar 4 2021"'],
    "time.parse_duration_ns": ['"1h"', '"1.5s"', '"300ms"', '"-2h45m"', '"1d"', '""', '"1us"',
                               '"10µs"', '"2h3m4s5ms"'],
    "time.ns": ["0", "1609459200000000000", "-1", "1700000000123456789", "86400000000000"],
    "semver": ['"1.0.0"', '"1.2.3-alpha.1+build"', '"v1.0.0"', '"1.0"', '"2.0.0"',
               '"1.0.0-rc.1"', '"1.10.0"'],
    "units.parse": ['"1K"', '"1Ki"', '"1.5M"', '"10m"', '"1e3"', '""', '"1 kb"', '"2Gi"',
                    '"100"', '"5mi"', '"500m"', '"0.1Ki"', '"-1.5m"', '"2.50"'],
    "units.parse_bytes": ['"1KB"', '"1KiB"', '"10"', '"5 MB"', '"1.5G"', '"1kb"', '"x"',
                          '"3.5"'],
    "base64": ['"aGVsbG8="', '"aGVsbG8"', '"!!"', '""', '"8J+Zgg=="'],
    "base64url": ['"aGVsbG8"', '"_-8="', '"!!"', '"aGVsbG8="'],
    "hex": ['"68656c6c6f"', '"zz"', '"abc"', '""', '"F0"'],
    "json": ['"{\\"a\\": 1}"', '"[1, 2"', '"\\"x\\""', '"12345678901234567890"', '"null"',
             '"{\\"a\\": 1e400}"', '"[1, 2.50, -0]"'],
    "yaml": ['"a: 1"', '"- x\\n- y"', '"a: [1"', '"{}"', '"a: yes\\nb: 0x10"'],
    "urlquery.decode": ['"a%20b"', '"a+b"', '"%zz"', '"x%3Dy"', '""'],
    "urlquery.decode_object": ['"a=1&b=2&a=3"', '"x"', '""', '"k=%zz"', '"e=%C3%A9"'],
    "io.jwt": TOKENS,
    "uuid": ['"f47ac10b-58cc-4372-a567-0e02b2c3d479"', '"not-a-uuid"',
             '"F47AC10B58CC4372A5670E02B2C3D479"', '"urn:uuid:f47ac10b-58cc-4372-a567-0e02b2c3d479"'],
    "sprintf": ['"%v"', '"%d items"', '"%s-%s"', '"%.2f"', '"%x"', '"%q"', '"%5d|%-5s|"',
                '"%v %v"', '"100%%"'],
    "format_int.base": ["2", "8", "10", "16", "3"],
    "strings.render_template": ['"{{.a}}"', '"x{{.b}}y"', '"{{"'],
    "crypto": STRS[:4],
    "graphql.query": [json.dumps(q) for q in [
        "{ user { id name } }", "query Q($id: ID!) { user(id: $id) { name } }",
        "{ user(id: 1) { ...F } } fragment F on User { name }", "{ nope }", "{ user { id",
        "mutation { rename(id: \"1\", to: \"x\") }", "{ user { id } } { user { name } }",
        "{ a: user { id } a: me { name } }", "{ user { ... on Admin { level } } }",
        "query { user(id: 1, id: 2) { id } }", "{ search(filter: {role: ADMIN}) { id } }",
        "{ search(filter: {role: \"ADMIN\"}) { id } }", "subscription { tick }", "",
        "{ user { id @skip(if: true) } }", "{ user { name @unknown } }", "{ me }"]],
    "graphql.schema": [json.dumps(s) for s in [
        "type Query { user(id: ID): User, me: User, search(filter: Filter): [User!]! }\n"
        "type User { id: ID!, name: String }\ntype Admin { level: Int }\n"
        "input Filter { role: Role }\nenum Role { ADMIN USER }\n"
        "type Mutation { rename(id: ID!, to: String!): User }",
        "type Query { user: User }\ntype User { id: ID! }",
        "schema { query: Root }\ntype Root { me: String }",
        "type Query { x: Missing }", "type Query { x: Int }\ntype Query { y: Int }",
        "interface Node { id: ID! }\ntype Query implements Node { name: String }",
        "extend type Query { user: String }", "type Query {", "enum E { true }\ntype Query { e: E }",
        "\"\"\"Doc\"\"\"\ntype Query { \"field doc\" user(id: ID = 1): String @deprecated }",
        "union U = A | B\ntype A { a: Int }\ntype Query { u: U }"]],
}

def domain_for(name, i, n):
    """A domain pool for argument i of n of built-in `name`, or None."""
    if name == "re_match" or name.startswith("regex."):
        if name == "regex.template_match" and i == 1:
            return ['"urn:foo:{.*}"', '"x{[0-9]+}"']
        if name == "regex.template_match" and i in (2, 3):
            return ['"{"', '"}"']
        if name in ("regex.find_n", "regex.find_all_string_submatch_n") and i == 2:
            return ["-1", "0", "1", "2"]
        if i == 0 or (name == "regex.replace" and i == 1):
            return DOMAIN["regex"] if i == 0 else STRS[:6]
        if name == "regex.globs_match":
            return DOMAIN["glob"]
        return STRS + ['"a123"', '"bc"', '"/api/x"']
    if name.startswith("glob."):
        if name == "glob.match" and i == 1:
            return ['[]', '["."]', '[".", "/"]', 'null']
        return DOMAIN["glob"]
    if name.startswith("net.cidr"):
        if name == "net.cidr_expand":
            # Small networks only: a /8 is 16 million addresses.
            return ['"10.0.0.0/30"', '"192.168.1.1/32"', '"::1/127"', '"x"', '"10.0.0.0/29"',
                    '"2001:db8::/126"']
        if name in ("net.cidr_merge",):
            return ['["10.0.0.0/24", "10.0.1.0/24"]', '["192.168.1.1", "192.168.1.0/24"]',
                    '{"10.0.0.0/8"}', '["x"]']
        if name == "net.cidr_contains_matches":
            return ['"10.0.0.0/8"', '["10.0.0.0/8", "192.168.0.0/16"]',
                    '{"a": "10.0.0.0/8"}', '["10.1.1.1", "8.8.8.8"]']
        return DOMAIN["net"]
    if name in ("time.parse_rfc3339_ns",):
        return DOMAIN["time.parse_rfc3339_ns"]
    if name == "time.parse_ns":
        return DOMAIN["time.parse_ns"]
    if name == "time.parse_duration_ns":
        return DOMAIN["time.parse_duration_ns"]
    if name in ("time.date", "time.clock", "time.weekday"):
        return DOMAIN["time.ns"] + ['[1609459200000000000, "UTC"]',
                                    '[1609459200000000000, "America/New_York"]',
                                    '[0, "Local"]', '[0, "Mars/Base"]']
    if name == "time.format":
        return DOMAIN["time.ns"] + ['[1609459200000000000, "UTC", "2006-01-02"]',
                                    '[1609459200000000000, "Asia/Tokyo", "RFC822"]',
                                    '[1609459200000000000, "Europe/Paris", "UnixDate"]',
                                    '[1609459200000000000, "Asia/Kathmandu", "RFC1123"]',
                                    '[1609459200000000000, "America/Sao_Paulo", "RFC850"]',
                                    '[0, "UTC"]']
    if name == "time.add_date":
        return DOMAIN["time.ns"] if i == 0 else ["0", "1", "-1", "12"]
    if name == "time.diff":
        return DOMAIN["time.ns"][:3] + ['[0, "UTC"]', '[1609459200000000000, "Europe/Paris"]']
    if name.startswith("semver."):
        return DOMAIN["semver"]
    if name == "units.parse":
        return DOMAIN["units.parse"]
    if name == "units.parse_bytes":
        return DOMAIN["units.parse_bytes"]
    if name in ("base64.decode", "base64.is_valid"):
        return DOMAIN["base64"]
    if name == "base64url.decode":
        return DOMAIN["base64url"]
    if name == "hex.decode":
        return DOMAIN["hex"]
    if name in ("json.unmarshal", "json.is_valid"):
        return DOMAIN["json"]
    if name in ("json.verify_schema", "json.match_schema"):
        return ['"{\\"type\\": \\"string\\"}"', '{"type": "object", "required": ["a"]}',
                '{"a": 1}', '"x"', '{"type": 1}']
    if name.startswith("graphql."):
        schema = name == "graphql.schema_is_valid" or name == "graphql.parse_schema" or i == 1
        return DOMAIN["graphql.schema" if schema else "graphql.query"]
    if name in ("yaml.unmarshal", "yaml.is_valid"):
        return DOMAIN["yaml"]
    if name == "urlquery.decode":
        return DOMAIN["urlquery.decode"]
    if name == "urlquery.decode_object":
        return DOMAIN["urlquery.decode_object"]
    if name == "urlquery.encode_object":
        return STR_OBJS + ['{"a": ["1", "2"]}', '{"s": {"x", "y"}}']
    if name.startswith("io.jwt.decode"):
        if i == 0:
            return TOKENS
        return ['{"secret": "secret"}', '{"secret": "secret", "aud": "api"}',
                '{"secret": "secret", "time": 0}', '{"cert": "x"}', '{}']
    if name.startswith("io.jwt.verify"):
        return TOKENS if i == 0 else ['"secret"', '"other"', '""']
    if name == "uuid.parse":
        return DOMAIN["uuid"]
    if name == "sprintf" and i == 0:
        return DOMAIN["sprintf"]
    if name == "format_int" and i == 1:
        return DOMAIN["format_int.base"]
    if name == "strings.render_template" and i == 0:
        return DOMAIN["strings.render_template"]
    if name.startswith("crypto.x509") or name.startswith("crypto.hmac"):
        return None
    if name in ("numbers.range", "numbers.range_step"):
        return ["0", "1", "5", "-3", "2.5", "10"]
    if name == "array.slice" and i > 0:
        return ["0", "1", "2", "-1", "10"]
    if name in ("substring",) and i > 0:
        return ["0", "1", "3", "-1", "100"]
    if name == "indexof_n" or name == "indexof":
        return STRS[:6] + ['"b"', '"c"', '","']
    if name in ("round", "ceil", "floor", "abs"):
        return NUMS + ["2.5", "-2.5", "0.5", "1.4999999999999999"]
    if name == "to_number":
        return STRS + ['"0x10"', '"1e3"', '" 1"', '"-0"', '"12345678901234567890"', "null",
                       "true", "3"]
    if name == "strings.count" and i == 1:
        return ['""', '"a"', '"b"', '"ab"']
    if name in ("bits.lsh", "bits.rsh") and i == 1:
        return ["0", "1", "3", "64", "-1"]
    if name.startswith("bits."):
        return ["0", "1", "5", "-1", "255", "9007199254740993", "2.5"]
    if name == "object.get" and i == 1:
        return ['"a"', '["a", "b"]', '[]', '"z"', "1"]
    if name in ("object.remove", "json.remove") and i == 1:
        return ['["a"]', '{"a", "c"}', '{"a": 1}', '["a/b"]', '[]']
    if name in ("object.filter", "json.filter") and i == 1:
        return ['["a"]', '{"a", "c"}', '["a/b"]', '[]', '["c"]']
    if name == "json.patch" and i == 1:
        return ['[{"op": "add", "path": "/z", "value": 1}]',
                '[{"op": "remove", "path": "/a"}]',
                '[{"op": "replace", "path": "/a", "value": "r"}]',
                '[{"op": "test", "path": "/a", "value": 2}]',
                '[{"op": "move", "from": "/a", "path": "/m"}]', '[]',
                '[{"op": "bogus"}]']
    if name == "graph.reachable" or name == "graph.reachable_paths":
        if i == 0:
            return ['{"a": ["b"], "b": ["c"], "c": []}', '{"a": {"b"}, "b": {"a"}}', '{}',
                    '{"a": ["x"]}']
        return ['["a"]', '{"b"}', '[]', '["z"]']
    if name == "strings.replace_n" and i == 0:
        return ['{"a": "1", "b": "2"}', '{}', '{"": "x"}', '{"ab": "A", "a": "B"}']
    if name in ("split", "replace", "trim", "trim_left", "trim_right", "trim_prefix",
                "trim_suffix", "contains", "startswith", "endswith", "strings.any_prefix_match",
                "strings.any_suffix_match") and i > 0:
        return STRS[:8] + ['","', '"a"', '" "', '"/"', '"c"']
    return None

def pool(decl, name, i, n):
    d = domain_for(name, i, n)
    if d is not None:
        return d
    t = decl.get("type")
    if t == "number":
        return NUMS
    if t == "string":
        return STRS
    if t == "boolean":
        return BOOLS
    if t == "null":
        return ["null"]
    if t == "array":
        elem = (decl.get("dynamic") or {}).get("type")
        if elem == "string":
            return STR_ARRAYS
        if elem == "number":
            return NUM_ARRAYS
        return ANY_ARRAYS
    if t == "set":
        elem = (decl.get("of") or {}).get("type")
        if elem == "string":
            return STR_SETS
        if elem == "number":
            return NUM_SETS
        return ANY_SETS
    if t == "object":
        value = ((decl.get("dynamic") or {}).get("value") or {}).get("type")
        return STR_OBJS if value == "string" else OBJS
    if t == "any" and isinstance(decl.get("of"), list):
        out = []
        for member in decl["of"]:
            for v in pool(member, "", i, n):
                if v not in out:
                    out.append(v)
        return out
    return ANY

WRONG = {"number": '"1"', "string": "1", "boolean": '"true"', "array": '"[]"', "set": "[1]",
         "object": "[]"}

def builtin_cases(caps, supported):
    cases = []
    for b in caps["builtins"]:
        name = b["name"]
        decl = b.get("decl", {})
        if name in SKIP or decl.get("type") != "function" or name not in supported:
            continue
        args = decl.get("args", [])
        if b.get("infix") and name not in ("count",):
            continue
        rng = random.Random("arbiter-opa-diff:" + name)
        pools = [pool(a, name, i, len(args)) for i, a in enumerate(args)]
        seen = set()
        combos = []
        if not args:
            combos.append([])
        # Every value of each pool at least once, then random combinations, 22 in all.
        longest = max((len(p) for p in pools), default=0)
        for k in range(longest):
            combos.append([p[(k + j) % len(p)] for j, p in enumerate(pools)])
        tries = 0
        while len(combos) < 22 and args and tries < 300:
            combos.append([rng.choice(p) for p in pools])
            tries += 1
        out = []
        for c in combos:
            key = tuple(c)
            if key in seen:
                continue
            seen.add(key)
            out.append(c)
        out = out[:22]
        # One wrong type per built-in with a typed first argument: OPA's type checker refuses it.
        if args and args[0].get("type") in WRONG and name not in ("sprintf",):
            out.append([WRONG[args[0]["type"]]] + [p[0] for p in pools[1:]])
        for k, c in enumerate(out):
            cases.append({"id": f"builtin/{name}/{k}", "group": name,
                          "query": f"x := {name}({', '.join(c)})"})
    return cases

OPERATORS = {
    "arith": (["+", "-", "*", "/", "%"], NUMS[:10]),
    "compare": (["==", "!=", "<", "<=", ">", ">="],
                ['1', '1.0', '"a"', '"b"', 'null', 'false', '[1]', '{"a": 1}', '{1}', '-0']),
    "sets": (["|", "&", "-"], ['{1, 2}', '{2, 3}', 'set()', '{"a"}']),
}

def operator_cases():
    cases = []
    for group, (ops, values) in OPERATORS.items():
        for op in ops:
            for a in values:
                for b in values:
                    cases.append({"id": f"op/{group}/{len(cases)}", "group": f"operator {group}",
                                  "query": f"x := {a} {op} {b}"})
    return cases

LANGUAGE = [
    # queries with bindings
    ("bindings", "x := 1; y := x + 1", None),
    ("bindings", "x := [1, 2, 3]; some i; x[i] > 1", None),
    ("bindings", "some x in [1, 2]; y := x * 10", None),
    ("bindings", "x := {\"a\": 1}; some k, v in x", None),
    ("bindings", "[a, b] := [1, 2]", None),
    ("bindings", "{\"k\": v} := {\"k\": \"value\"}", None),
    ("bindings", "x = 1", None),
    ("bindings", "x := 1; x > 5", None),
    ("bindings", "x := \"s\"; y := concat(\"-\", [x, x])", None),
    ("bindings", "a := 37037036703703703670; b := a + 1", None),
    ("bindings", "a := 1.5e300 * 10", None),
    ("bindings", "a := 0.1 + 0.2; b := 1 / 3; c := 2 / 2", None),
    ("bindings", "a := -0; b := 0 == -0", None),
    ("bindings", "a := 1e400", None),
    ("bindings", "a := 9007199254740993 + 0", None),
    ("bindings", "a := 3 * 0.1; b := 10 % 3; c := -7 % 3", None),
    ("bindings", "a := 5 / 2; b := 4 / 2; c := 1 / 8", None),
    ("bindings", "a := 100000000000000000000 - 1", None),
    ("bindings", "a := {x | x := [1, 2, 2][_]}", None),
    ("bindings", "a := [x * 2 | some x in [1, 2, 3]; x != 2]", None),
    ("bindings", "a := {k: v | some k, v in {\"a\": 1, \"b\": 2}; v > 1}", None),
    ("bindings", "every x in [1, 2] { x > 0 }", None),
    ("bindings", "every x in [1, -2] { x > 0 }", None),
    ("bindings", "every x in [] { x > 0 }", None),
    ("bindings", "not 1 == 2", None),
    ("bindings", "x := \"\\u00e9\"; y := count(x)", None),
    ("bindings", "x := `raw\\nstring`", None),
    ("bindings", "x := {\"b\": 1, \"a\": 2, \"c\": {\"z\": 1, \"y\": 2}}", None),
    ("bindings", "x := {3, 1, 2, \"a\", null, [1], {\"k\": 1}}", None),
    ("bindings", "x := [null, true, false, 1, \"s\", [], {}, set()]", None),
    ("bindings", "x := {1: \"a\", \"1\": \"b\", true: \"c\", null: \"d\"}", None),
    ("bindings", "x := {[1, 2]: \"arr\"}", None),
    ("bindings", "x := [1, 2, 3][1]", None),
    ("bindings", "x := [1, 2, 3][5]", None),
    ("bindings", "x := {\"a\": {\"b\": 1}}.a.b", None),
    ("bindings", "x := \"abc\"[0]", None),
    ("bindings", "x := {1, 2}[1]", None),
    ("bindings", "x := {1, 2}[3]", None),
    # Numbers as OPA keeps and computes them (texts, big.Float, the minus before a literal).
    ("numbers", "a := [- 5, - 0, - 2.50]; b := [2.50, 1e3, -0, 0.10]", None),
    ("numbers", "a := ceil(-0.5); b := floor(-0.5); c := round(-0.5); d := round(2.5)", None),
    ("numbers", "a := sum([0.1, 0.2]); b := product([3.0, 0.1]); c := product([0, -5000])", None),
    ("numbers", "a := 0.1 * 3 == 0.3; b := 1e3 == 1000; c := 2.50 == 2.5", None),
    ("numbers", "a := sprintf(\"%v|%v|%v\", [2.50, 2e308, [2.50]]); b := json.marshal([2.50, -0])", None),
    ("numbers", "a := 7 / 2; b := 0 / -5; c := 1e3 + 1; d := 3.0 * 2", None),
    ("numbers", "a := abs(-0); b := abs(-2.50); c := 10 % 3.0; d := 37037036703703703670 % 7", None),
    # sprintf is Go's fmt.Sprintf over OPA's operands: quoting, flags, widths, precisions,
    # argument indexes, big integers, and every %! complaint.
    ("sprintf", 'a := sprintf("%q|%q|%q|%q|%q", ["foo", "a\\"b", "tab\\there", "x\\u00a0y", "x\\u007fy"]); b := sprintf("%10q|%-6q|%.3q|%+q|%#q|%#q", ["foo", "a", "abcdef", "héllo", "b`q", "plain"])', None),
    ("sprintf", 'a := sprintf("%05d|%-5d|%+d|% d|%x|%X|%#x|%o|%#o|%O|%b|%#b|%c|%q|%U|%#U|%.3d|%.0d|%-05d|", [42, 42, 42, 42, 255, 255, 255, 8, 8, 8, 5, 5, 65, 66, 9731, 9731, 7, 0, 3])', None),
    ("sprintf", 'a := sprintf("%e|%E|%.3e|%g|%G|%.3g|%8.2f|%-8.2f|%08.2f|%+.1f|%x|%b|%#g|%#.3x", [1234.5678, 1234.5678, 1234.5678, 0.000012345, 1e21, 3.14159, 3.14159, 3.14159, -3.14159, 2.25, 1.5, 2.5, 1.5, 3.75])', None),
    ("sprintf", 'a := sprintf("%v|%v|%v|%v|%v|%v|%f|%.1f", [1e6, 123456789.0, 1e-5, 0.1, 100000.5, -0.0, 0.125, 0.25])', None),
    ("sprintf", 'a := sprintf("%d|%x|%s|%v|%40d|%-40d|%c|%+d|%#X|%O|%.45d", [37037036703703703670, 37037036703703703670, 37037036703703703670, 37037036703703703670, 37037036703703703670, -37037036703703703670, 37037036703703703670, 37037036703703703670, 37037036703703703670, 37037036703703703670, 37037036703703703670])', None),
    ("sprintf", 'a := sprintf("%[2]d %[1]s|%*d|%.*f|%-*d|", ["a", 7, 5, 42, 2, 3.14159, -4, 9]); b := sprintf("%d %!|%z|%[5]d|%", [1, 2])', None),
    ("sprintf", 'a := sprintf("%s|%v|%d|%t|%T|%T|%T|%T|%p", [[1, "a"], {"k": {1, 2}}, true, null, 1, 2.5, "s", 37037036703703703670, 1])', None),
    ("sprintf", 'a := sprintf("%6.2v|%x|%X|% x|%#x|% #X|%s|%08s|%-8s|", ["abcdef", "hi", "hi", "hi", "hi", "hi", set(), "ab", "ab"])', None),
    # strings.replace_n is Go's strings.Replacer: one pass, earliest pattern first.
    ("strings", 'a := strings.replace_n({"a": "b", "b": "c"}, "ab"); b := strings.replace_n({"": "-", "a": "1"}, "ab"); c := strings.replace_n({"a": "", "": "-"}, "ba"); d := strings.replace_n({"aa": "b", "a": "c"}, "aaa")', None),
    # Short exact decimals (f64 fast path) next to inexact ones (big.Float path).
    ("numbers", 'a := [x + y | some x in [87.5, 0.75, 2.25, 0.1, 12.125, -3.5, 1e-3, 4096]; some y in [0.25, 0.2, -2.5, 7, 1e15]]', None),
    ("numbers", 'a := [x - y | some x in [87.5, 0.75, 2.25, 0.1, 12.125, -3.5, 1e-3, 4096]; some y in [0.25, 0.2, -2.5, 7, 1e15]]', None),
    ("numbers", 'a := [x * y | some x in [87.5, 0.75, 2.25, 0.1, 12.125, -3.5, 1e-3, 4096]; some y in [0.25, 0.2, -2.5, 7, 1e15]]', None),
    ("numbers", 'a := [x / y | some x in [87.5, 0.75, 2.25, 0.1, 12.125, -3.5, 1e-3, 4096]; some y in [0.25, 0.2, -2.5, 7, 1e15]]', None),
    # graph.reachable_paths is OPA's pathBuilder: a node reached before ends the path.
    ("graph", 'a := graph.reachable_paths({"one": ["two", "five"], "two": ["four"], "three": [""], "four": ["three"], "five": ["seven", "six"], "six": ["nine", "seven"], "seven": ["eight"], "eight": ["three"], "nine": [""]}, {"one"}); b := graph.reachable_paths({"a": ["b", "c", "d"], "b": ["a"], "c": ["a"], "d": []}, ["a", "z"])', None),
    # Go's AddDate normalises: Jan 31 + 1 month is Mar 3, Feb 29 + 1 year is Mar 1.
    ("time", "a := time.add_date(1612051200000000000, 0, 1, 0); b := time.add_date(1582934400000000000, 1, 0, 0)", None),
]

MODULES = {
    "partial": ("package t\n\nnames contains n if some n in [\"b\", \"a\", \"b\"]\n\n"
                "roles[u] := r if some u, r in {\"alice\": \"admin\", \"bob\": \"dev\"}\n\n"
                "default allow := false\n\nallow if input.user == \"alice\"\n\n"
                "f(x) := x * 2\n\nf(\"s\") := \"string\"\n\n"
                "g(x) := y if { y := x + 1 } else := 0\n\n"
                "level := \"high\" if input.n > 10\nelse := \"mid\" if input.n > 5\nelse := \"low\"\n\n"
                "conflict := 1 if input.c\n\nconflict := 2 if input.c\n\n"
                "obj.a.b := 1\n\nobj.a.c := 2\n\n"
                "nums := [n | some n in numbers.range(1, 5)]\n\n"
                "first := input.items[0]\n\n"
                "deny contains msg if { some item in input.items; item > 2; msg := sprintf(\"%v too big\", [item]) }\n"),
}

MODULE_QUERIES = [
    ("data.t.names", None), ("data.t.roles", None), ("data.t.roles.alice", None),
    ("data.t.allow", {"user": "alice"}), ("data.t.allow", {"user": "bob"}), ("data.t.allow", None),
    ("data.t.f(2)", None), ("data.t.f(\"s\")", None), ("data.t.g(1)", None), ("data.t.g(\"x\")", None),
    ("data.t.level", {"n": 11}), ("data.t.level", {"n": 6}), ("data.t.level", {"n": 1}),
    ("data.t.level", {}), ("data.t.conflict", {"c": True}), ("data.t.conflict", {"c": False}),
    ("data.t.obj", None), ("data.t.obj.a", None), ("data.t.nums", None),
    ("data.t.first", {"items": [5, 1]}), ("data.t.first", {"items": []}),
    ("data.t.deny", {"items": [1, 3, 4]}), ("data.t.deny", {"items": "x"}),
    ("data.t.allow with input.user as \"alice\"", None),
    ("data.t.allow with input as {\"user\": \"alice\"}", {"user": "x"}),
    ("data.t.f(2) with data.t.f as 7", None),
    ("data.t.names with data.t.names as {\"z\"}", None),
    ("data.t", {"user": "alice", "n": 7, "items": [1]}),
    ("data.t.missing", None), ("data.x.y", None),
    ("count(data.t.names)", None), ("x := data.t.roles; some u; x[u] == \"dev\"", None),
    ("data.t.allow == true", {"user": "alice"}),
]

def language_cases():
    cases = []
    for group, query, _ in LANGUAGE:
        cases.append({"id": f"lang/{len(cases)}", "group": f"language {group}", "query": query})
    for q, inp in MODULE_QUERIES:
        c = {"id": f"lang/{len(cases)}", "group": "language rules",
             "query": q, "modules": [["t.rego", MODULES["partial"]]]}
        if inp is not None:
            c["input"] = inp
        cases.append(c)
    # Data documents.
    data = {"roles": {"alice": ["admin"], "bob": []}, "n": 37037036703703703670, "f": 1.5}
    for q in ["data.roles", "data.roles.alice[0]", "data.n", "data.f * 2", "data.n + 1",
              "count(data.roles)", "data", "data.roles[\"carol\"]"]:
        cases.append({"id": f"lang/{len(cases)}", "group": "language data", "query": q,
                      "data": data})
    return cases

def policy_test_cases():
    cases = []
    for root, _, files in os.walk(os.path.join(REPO, "policies")):
        rego = sorted(f for f in files if f.endswith(".rego"))
        if not any(f.endswith("_test.rego") for f in rego):
            continue
        modules = []
        for f in rego:
            with open(os.path.join(root, f)) as fh:
                modules.append([os.path.relpath(os.path.join(root, f), REPO), fh.read()])
        data = None
        for f in sorted(files):
            if f == "data.json":
                with open(os.path.join(root, f)) as fh:
                    data = json.load(fh)
        for name, text in modules:
            if not name.endswith("_test.rego"):
                continue
            package = next(l.split()[1] for l in text.splitlines() if l.startswith("package "))
            for line in text.splitlines():
                if line.startswith("test_"):
                    rule = line.split()[0].split("(")[0]
                    c = {"id": f"policy/{name}/{rule}", "group": "bundled policy tests",
                         "query": f"data.{package}.{rule}", "modules": modules}
                    if data is not None:
                        c["data"] = data
                    cases.append(c)
    return cases

def run_opa(case):
    with tempfile.TemporaryDirectory() as d:
        cmd = [OPA, "eval", "-f", "json"]
        for name, text in case.get("modules", []):
            p = os.path.join(d, "m", name)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as fh:
                fh.write(text)
        if case.get("modules"):
            cmd += ["-d", os.path.join(d, "m")]
        if "data" in case:
            p = os.path.join(d, "data.json")
            with open(p, "w") as fh:
                json.dump(case["data"], fh)
            cmd += ["-d", p]
        if "input" in case:
            p = os.path.join(d, "input.json")
            with open(p, "w") as fh:
                json.dump(case["input"], fh)
            cmd += ["-i", p]
        cmd.append(case["query"])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return {"errors": [{"code": "opa_timeout", "message": "opa eval took over 60 s"}]}
        try:
            doc = json.loads(out.stdout, parse_int=str_int, parse_float=str_float,
                             object_pairs_hook=ordered)
        except json.JSONDecodeError:
            doc = {"errors": [{"code": "opa_failed", "message": (out.stdout + out.stderr)[:500]}]}
        for e in doc.get("errors", []) if isinstance(doc, dict) else []:
            e.pop("details", None)
            loc = e.get("location")
            if isinstance(loc, dict):
                # File names are temporary: keep the row and column.
                loc.pop("file", None)
        return doc

class Num:
    """A JSON number kept as OPA wrote it."""
    def __init__(self, text):
        self.text = text

def str_int(t):
    return Num(t)

def str_float(t):
    return Num(t)

def ordered(pairs):
    return dict(pairs)

def dump(v):
    """JSON text with numbers exactly as OPA printed them."""
    if isinstance(v, Num):
        return v.text
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + dump(x)
                              for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dump(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)

def supported_by_arbiter(caps):
    names = set()
    probes = []
    for b in caps["builtins"]:
        decl = b.get("decl", {})
        if decl.get("type") != "function":
            continue
        args = ", ".join(pool(a, b["name"], i, len(decl.get("args", [])))[0]
                         for i, a in enumerate(decl.get("args", [])))
        probes.append((b["name"], f"x := {b['name']}({args})"))

    def probe(item):
        name, query = item
        try:
            out = subprocess.run([ARBITER, "eval", "-f", "json", query], capture_output=True,
                                 text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return name, True
        said = out.stdout + out.stderr
        # regorus's wording, and since arbiter checks calls at load, OPA's.
        return name, not ("could not find function" in said or
                          f"undefined function {name}" in said)

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        for name, ok in ex.map(probe, probes):
            if ok:
                names.add(name)
    return names

def main():
    caps = json.loads(subprocess.run([OPA, "capabilities", "--current"], capture_output=True,
                                     text=True, check=True).stdout)
    supported = supported_by_arbiter(caps)
    missing = sorted(b["name"] for b in caps["builtins"]
                     if b.get("decl", {}).get("type") == "function" and b["name"] not in supported
                     and b["name"] not in SKIP)
    print(f"arbiter lacks {len(missing)} of OPA's built-ins: {', '.join(missing)}",
          file=sys.stderr)
    cases = builtin_cases(caps, supported) + operator_cases() + language_cases() + \
        policy_test_cases()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(run_opa, cases))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    version = subprocess.run([OPA, "version"], capture_output=True, text=True).stdout.splitlines()[0]
    with open(OUT, "w") as fh:
        fh.write(json.dumps({"recorded_with": version, "cases": len(cases),
                             "command": "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-diff/record.py"}) + "\n")
        for case, doc in zip(cases, results):
            fh.write(dump(dict(case, opa=doc)) + "\n")
    print(f"{len(cases)} cases written to {os.path.relpath(OUT, REPO)}", file=sys.stderr)

if __name__ == "__main__":
    main()
