#!/usr/bin/env python3
"""Record the argument and result types OPA declares for its built-ins.

    ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa python3 conformance/opa-diff/builtin-types.py

reads `opa capabilities --current` and writes engine/src/typecheck/opa-builtin-types.json: for
each built-in its argument types, its result type and whether it is variadic, with the
descriptions and names dropped. arbiter's type check of built-in calls (engine/src/typecheck.rs)
reads it; nothing at run time needs OPA. The declarations are OPA's (Apache License 2.0).
"""

import json
import os
import subprocess

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(REPO, "engine", "src", "typecheck", "opa-builtin-types.json")
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))


def strip(t):
    """A type without its documentation: only `type`, `of`, `static`, `dynamic`, `key`, `value`."""
    if isinstance(t, list):
        return [strip(x) for x in t]
    if not isinstance(t, dict):
        return t
    return {k: strip(v) for k, v in t.items() if k in ("type", "of", "static", "dynamic", "key", "value")}


def main():
    version = subprocess.run([OPA, "version"], capture_output=True, text=True, check=True).stdout
    caps = json.loads(
        subprocess.run([OPA, "capabilities", "--current"], capture_output=True, text=True, check=True).stdout
    )
    out = {}
    for b in sorted(caps["builtins"], key=lambda b: b["name"]):
        decl = b["decl"]
        entry = {"args": strip(decl.get("args", [])), "result": strip(decl.get("result", {"type": "any"}))}
        if "variadic" in decl:
            entry["variadic"] = strip(decl["variadic"])
        if "infix" in b:
            entry["infix"] = b["infix"]
        out[b["name"]] = entry
    doc = {
        "source": "opa capabilities --current, " + version.splitlines()[0]
        + " (Apache License 2.0); regenerate with: ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa"
        " python3 conformance/opa-diff/builtin-types.py",
        "builtins": out,
    }
    with open(OUT, "w") as f:
        f.write(json.dumps(doc, separators=(",", ":"), sort_keys=True))
        f.write("\n")
    print(f"wrote {len(out)} built-ins to {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    main()
