#!/usr/bin/env python3
"""Generate small access policies and record what real OPA decides for each.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-diff/record-generated.py

writes conformance/cases/opa-diff/generated.jsonl: one policy per line (package `gen`, rule
`r`), its inputs, and `opa`, the JSON `opa eval -f json data.gen.r` printed for each input.
`cargo test -p arbiter-conformance --test opa_generated` decides every case on arbiter's
interpreter and on its bytecode VM and compares both with the recording; CI never needs OPA.

The policies are put together, with a fixed seed, from rule heads (a complete value, a
partial set, a partial object, a value with `else`, a boolean) and body literals that bind,
iterate, quantify and compare as access policies do: an `every` over a list indexing another
by the quantifier's key (a grant's path segments against the request's), `some` over arrays
and objects, comprehensions, functions with defaults and conflicting definitions, negation,
arithmetic, string built-ins and CIDR checks over string inputs, object and array patterns,
and references that are undefined. Built-in errors are recorded as `opa eval` answers them
by default (the expression undefined); the test compares the interpreter in that mode. engine/src/rvm/differential.rs generates
the same kind of policies for a property test of the VM against the interpreter; this corpus
holds both to OPA's answers.
"""

import concurrent.futures
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from importlib import import_module

record = import_module("record")

REPO = record.REPO
OUT = os.path.join(REPO, "conformance", "cases", "opa-diff", "generated.jsonl")
SEED = 20261206
POLICIES = 400
INPUTS_PER_POLICY = 3

# The pieces, shared with engine/src/rvm/differential.rs.
with open(os.path.join(REPO, "engine", "src", "rvm", "policy-pieces.json")) as fh:
    PIECES = json.load(fh)
BINDERS = PIECES["binders"]
CONDITIONS = PIECES["conditions"]
BOUND_CONDITIONS = PIECES["bound_conditions"]
BOUND_VALUES = PIECES["bound_values"]
VALUES = PIECES["values"]
HELPERS = PIECES["helpers"]


def definition(rng, kind):
    binder = rng.choice([None] + list(range(len(BINDERS))))
    body = []
    if binder is not None:
        body.append(BINDERS[binder])
        body += [rng.choice(BOUND_CONDITIONS) for _ in range(rng.randrange(0, 2))]
    body += [rng.choice(CONDITIONS) for _ in range(rng.randrange(0, 3))]
    if not body:
        body = ["true"]
    bound = binder is not None
    value = rng.choice(BOUND_VALUES if bound else VALUES)
    body = "\n  ".join(body)
    if kind == 0:
        return f"r := {value} if {{\n  {body}\n}}\n"
    if kind == 1:
        return f"r contains {value} if {{\n  {body}\n}}\n"
    if kind == 2:
        key = "i" if bound else '"k"'
        return f"r[{key}] := {value} if {{\n  {body}\n}}\n"
    if kind == 3:
        return f"r := {value} if {{\n  {body}\n}} else := 7 if {{\n  input.n > 0\n}}\n"
    return f"r if {{\n  {body}\n}}\n"


def small_input(rng):
    ints = lambda: [rng.randrange(0, 4) for _ in range(rng.randrange(0, 4))]
    obj = lambda: {k: rng.randrange(0, 4) for k in rng.sample(["a", "b", "c"], rng.randrange(0, 3))}
    strs = {k: rng.choice(["x", "admin", "y"]) for k in rng.sample(["admin", "bob"], rng.randrange(0, 3))}
    return {"a": ints(), "b": ints(), "o": obj(), "o2": obj(), "n": rng.randrange(0, 4),
            "s": rng.choice(["admin", "bob", "ad-min", "", "Admin"]),
            "p": rng.choice([["a", "b"], ["a"], [], ["b", "a"]]), "u": strs,
            "ip": rng.choice(["10.1.2.3", "192.168.0.1", "bad"])}


def policies():
    rng = random.Random(SEED)
    out = []
    for p in range(POLICIES):
        kind = rng.randrange(0, 5)
        rules = "".join(definition(rng, kind) for _ in range(rng.randrange(1, 4)))
        module = f"package gen\nimport rego.v1\n{HELPERS}{rules}"
        inputs = [small_input(rng) for _ in range(INPUTS_PER_POLICY)]
        out.append({"id": f"gen/{p}", "module": module, "inputs": inputs})
    return out


def main():
    all_policies = policies()
    runs = [{"query": "data.gen.r", "modules": [["gen.rego", p["module"]]], "input": i}
            for p in all_policies for i in p["inputs"]]
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        results = iter(list(ex.map(record.run_opa, runs)))
    version = record.subprocess.run([record.OPA, "version"], capture_output=True,
                                    text=True).stdout.splitlines()[0]
    with open(OUT, "w") as fh:
        fh.write(json.dumps({"recorded_with": version, "policies": len(all_policies),
                             "cases": len(runs), "seed": SEED,
                             "command": "ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-diff/record-generated.py"}) + "\n")
        for p in all_policies:
            p = dict(p, opa=[next(results) for _ in p["inputs"]])
            fh.write(record.dump(p) + "\n")
    print(f"{len(runs)} cases of {len(all_policies)} policies written to "
          f"{os.path.relpath(OUT, REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
