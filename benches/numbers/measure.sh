#!/usr/bin/env bash
# OPA's arithmetic in arbiter (regorus patch 22) beside OPA: `arbiter bench` and `opa bench` on
# the same four rules (benches/numbers/arith.rego) and input, three runs each, alternating.
# Prints arbiter's p50 and allocations per evaluation and OPA's median evaluation time and
# allocations. Each run lasts about a second; the whole script about 30 s.
#   cargo build --release -p arbiter-cli
#   ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa bash benches/numbers/measure.sh
set -euo pipefail
cd "$(dirname "$0")"
A=../../target/release/arbiter
O="${ARBITER_REFERENCE_OPA:-$HOME/.cache/arbiter-ref/opa}"
printf '%-20s %-4s %16s %14s %16s %12s\n' rule run "arbiter p50 ns" "arbiter allocs" "opa median ns" "opa allocs"
for q in ints floats mixed ratio_ok; do
  for r in 1 2 3; do
    a=$("$A" bench -d arith.rego -i input.json -f json "data.bench.$q" |
      python3 -c 'import sys,json; d=json.load(sys.stdin)[0]; print(int(d["p50_ns"]), int(d["allocs_per_op"]))')
    if [ -x "$O" ]; then
      o=$("$O" bench -d arith.rego -i input.json -f json "data.bench.$q" 2>/dev/null |
        python3 -c 'import sys,json; d=json.load(sys.stdin); print(int(d["Extra"]["histogram_timer_rego_query_eval_ns_median"]), round(d["MemAllocs"]/d["N"]))')
    else
      o="- -"
    fi
    # shellcheck disable=SC2086
    printf '%-20s %-4s %16s %14s %16s %12s\n' "$q" "$r" $a $o
  done
done
