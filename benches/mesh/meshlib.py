"""What the mesh-size measurement scripts share: where the binaries are, a free loopback port
and a process's resident memory (the last two are the Envoy load harness's own,
benches/envoy_load.py)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ARBITER = os.environ.get("ARBITER", os.path.join(REPO, "target", "release", "arbiter"))
OPA = os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa"))

sys.path.insert(0, os.path.dirname(HERE))
from envoy_load import free_port, rss_kib  # noqa: E402,F401


def rss_mib(pid):
    """VmRSS of `pid` in MiB (NaN when /proc does not say)."""
    kib = rss_kib(pid).get("VmRSS")
    return kib / 1024 if kib is not None else float("nan")
