#!/usr/bin/env bash
# Decision time of issue 18's router shape against the number of service packages, arbiter's
# VM and interpreter beside OPA (when the reference binary is at hand):
#
#   cargo build --release -p arbiter-cli
#   ARBITER_REFERENCE_OPA=~/.cache/arbiter-ref/opa bash benches/mesh/measure-router.sh [P...]
#
# Prints a Markdown table (median ns per decision from each `bench`, bytes allocated) and
# checks that arbiter and OPA decide the generated inputs alike. Every run is bounded by
# --benchtime; nothing listens on the network.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARBITER=${ARBITER:-target/release/arbiter}
OPA=${ARBITER_REFERENCE_OPA:-}
SIZES=${*:-10 100 1000 2500}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

ns() { python3 -c 'import sys,json; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(round(d.get("p50_ns") or d.get("NsPerOp")), round(d.get("bytes_per_op", 0)))'; }

echo "| packages | arbiter VM, median ns | VM bytes | arbiter interpreter, median ns | interpreter bytes | OPA, median ns | OPA bytes |"
echo "|---|---|---|---|---|---|---|"
for p in $SIZES; do
  dir=$WORK/p$p
  python3 benches/mesh/gen-router.py "$p" "$dir"
  set -- -d "$dir/router.rego" -d "$dir/svc" -i "$dir/inputs/hit.json"
  read -r vm vm_bytes < <("$ARBITER" bench "$@" --engine rvm --benchtime 2s -f json data.envoy.authz.allow | ns)
  read -r interp interp_bytes < <("$ARBITER" bench "$@" --engine interpreter --benchtime 2s -f json data.envoy.authz.allow | ns)
  opa="- -"
  if [ -n "$OPA" ]; then
    opa=$("$OPA" bench "$@" --benchmem --format json data.envoy.authz.allow \
      | python3 -c 'import sys,json; d=json.load(sys.stdin); print(round(d["Extra"]["histogram_timer_rego_query_eval_ns_median"]), round(d["MemBytes"] / d["N"]))')
    for case in hit miss unknown; do
      a=$("$ARBITER" eval -f json -d "$dir/router.rego" -d "$dir/svc" -i "$dir/inputs/$case.json" data.envoy.authz.allow \
        | python3 -c 'import sys,json; print(json.load(sys.stdin)["result"][0]["expressions"][0]["value"])')
      o=$("$OPA" eval -f json -d "$dir/router.rego" -d "$dir/svc" -i "$dir/inputs/$case.json" data.envoy.authz.allow \
        | python3 -c 'import sys,json; print(json.load(sys.stdin)["result"][0]["expressions"][0]["value"])')
      [ "$a" = "$o" ] || { echo "P=$p $case: arbiter $a, OPA $o" >&2; exit 1; }
    done
  fi
  read -r opa_ns opa_bytes <<<"$opa"
  echo "| $p | $vm | $vm_bytes | $interp | $interp_bytes | $opa_ns | $opa_bytes |"
done
