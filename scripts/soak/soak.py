#!/usr/bin/env python3
"""Chaos soak for dify-shaper: `make soak` (10 minutes a leg), `SOAK=60s make soak` (CI).

Each leg starts a backend and dify-shaper on free 127.0.0.1 ports (config, logs and the
backend's run log in a temp dir), sends open-loop load through the proxy (Poisson arrivals:
blocking workflow runs, streaming runs read to the end, multipart file uploads, each with its
own X-Request-Id; some clients give up mid-queue or mid-stream) and hits it with chaos at
random moments: backend SIGTERM / SIGKILL / SIGSTOP+SIGCONT / restart, proxy SIGHUP with a
changed valid config and with an invalid one, manual drain/resume through `dify-shaper ctl` or
the admin API. The warm-up lasts until every kind of chaos step has run once (at least 10 % of
the time, at most half). Then it stops the load, waits (bounded) for quiet and checks the
invariants below, printing each with its numbers; any failure exits 1.

1. every request answered exactly once: each id sent is in the access log once, with the
   status its client saw; every client got one whole answer or gave up itself; the access log
   has no request nobody sent;
2. no non-idempotent request executed twice, by the backend's own run log (the simulator's
   `--run-log`, e2e/app.py's `E2E_RUN_LOG`). The proxy replays a POST only when the backend
   provably did not start it (refused connect, stale pooled connection, a reset with the
   request unread, 429/503, Dify's API-key 500): none of those runs anything, and no route
   here opts into `retry_after_processing`, so any id twice is a failure;
3. no panic in the proxy's log, and the proxy is alive at the end;
4. the proxy's RSS at the end is at most 10 % above its value after the warm-up: the most it
   held during the warm-up (its allocator keeps the pages of a burst, a held queue released
   at once, until it allocates much again: what a burst took is working set). At the end,
   the lower of the median of the load's last 3 s and the lowest of 5 s of idle readings (an
   idle allocator keeps the last burst's pages, a leak keeps them always). /status and
   /metrics are scraped every 2 s throughout, as a monitoring system would;
5. admission in flight and queued back to 0 (/status and /metrics);
6. the counters add up: /metrics requests_total (by status) and proxy_errors_total (by code)
   against the access log, admission decisions (admitted + shed + abandoned) against the
   requests that reached admission, /status against /metrics, reload counts against the
   reloads sent;
7. the chaos steps did what they should: an invalid config refused (the proxy still ready),
   a valid one taken, every `ctl` exit 0, the backend healthy again after each step.

Files of a leg (kept when it fails, or with SOAK_KEEP=1): dify-shaper.toml, proxy.log (its
stderr: JSON logs), access.jsonl (the access-log lines), clients.jsonl (what each client
saw), runs.jsonl (the backend's run log), backend.log, monitor.tsv (RSS, in flight, queued).

Legs: `sim` (the built-in Dify simulator) and `gunicorn` (e2e/app.py under real gunicorn +
gevent + PostgreSQL, as prepared by `bash e2e/setup.sh`; skipped in one line when that is
missing, unless SOAK_REQUIRE_GUNICORN=1).

Environment (each also a flag, see --help): SOAK (duration per leg, default 10m), SOAK_SEED
(replay a run's random choices), SOAK_BIN (the dify-shaper binary; default
target/release/dify-shaper, which `make soak` builds), SOAK_LEGS (sim,gunicorn), SOAK_RATE
(requests/s), SOAK_KEEP=1 (keep the temp dir; it is kept anyway when a leg fails).

Python 3 standard library only. Every wait is bounded; every child process runs in its own
process group and is killed on exit (a stopped one is continued first).
"""

import argparse
import atexit
import collections
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
T0 = time.monotonic()

# A client that hears nothing for this long is a failure (the longest legitimate answer is a
# run held through an outage: queue timeout 30 s plus the run).
CLIENT_TIMEOUT = 120.0
# Share of requests whose client gives up by itself at a random moment.
ABORT_SHARE = 0.10
# Most client threads at once; arrivals beyond are counted, not sent.
MAX_CLIENTS = 800
KINDS = ("blocking", "streaming", "upload")
KIND_WEIGHTS = (0.45, 0.35, 0.20)
TENANTS = ("app-soaktenant0000a", "app-soaktenant0000b", "app-soaktenant0000c")
CHAOS_KINDS = (
    "backend_sigterm",
    "backend_sigkill",
    "backend_stop_cont",
    "backend_restart",
    "reload_valid",
    "reload_invalid",
    "drain_resume",
    "drain_restart_resume",
)


def say(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def parse_duration(text):
    """`600`, `60s`, `10m`, `1h`, `1m30s` → seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (e.g. 60s, 10m)")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(port, method, path, body=None, headers=None, timeout=5.0):
    """One request to 127.0.0.1:port; returns (status, body bytes). Raises on failure."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until(predicate, timeout, interval=0.1):
    """Polls `predicate` until it returns a true value or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - a probe that fails is a probe that says no
            value = None
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Child processes: each in its own process group, all killed on exit.


class Children:
    def __init__(self):
        self.lock = threading.Lock()
        self.procs = []  # (name, Popen, stop signal, grace)

    def spawn(self, name, argv, stop_signal=signal.SIGKILL, grace=0.0, **kw):
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kw)
        with self.lock:
            self.procs.append((name, proc, stop_signal, grace))
        return proc

    def forget(self, proc):
        with self.lock:
            self.procs = [p for p in self.procs if p[1] is not proc]

    @staticmethod
    def kill_group(proc, sig):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, proc, sig=signal.SIGKILL, grace=0.0):
        """Stops `proc` and its group: `sig`, up to `grace` seconds, then SIGKILL."""
        # A stopped process cannot act on a signal: continue it first.
        self.kill_group(proc, signal.SIGCONT)
        if proc.poll() is None and sig != signal.SIGKILL:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(proc, signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.forget(proc)

    def stop_all(self):
        with self.lock:
            procs = list(reversed(self.procs))
        for _name, proc, sig, grace in procs:
            self.stop(proc, sig, grace)


CHILDREN = Children()
atexit.register(CHILDREN.stop_all)


def _on_signal(signum, _frame):
    say(f"soak: signal {signum}: stopping every child process")
    CHILDREN.stop_all()
    sys.exit(128 + signum)


# ---------------------------------------------------------------------------------------------
# Backends.


class Backend:
    """What the chaos and the load need of a backend."""

    name = "?"
    proc = None
    port = 0

    def start(self):
        raise NotImplementedError

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def healthy(self):
        try:
            status, _ = http_call(self.port, "GET", "/health", timeout=1.0)
            return status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout=30.0):
        return wait_until(lambda: self.alive() and self.healthy(), timeout, 0.05)

    def signal(self, sig, group=False):
        if not self.alive():
            return
        if group:
            Children.kill_group(self.proc, sig)
        else:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Waits for the backend to exit; kills its group when it does not in time."""
        try:
            self.proc.wait(timeout=timeout)
            clean = True
        except subprocess.TimeoutExpired:
            clean = False
        # Workers that outlive their master would hold the port.
        CHILDREN.stop(self.proc)
        self.proc = None
        return clean

    def ensure_running(self):
        """After the chaos: continued, running and healthy."""
        if self.alive():
            self.signal(signal.SIGCONT, group=True)
        else:
            self.start()
        return self.wait_healthy(30.0)

    def close(self):
        if self.proc is not None:
            CHILDREN.stop(self.proc, signal.SIGTERM, 5.0)
            self.proc = None

    def run_headers(self, service, events):
        raise NotImplementedError


class SimBackend(Backend):
    name = "sim"

    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp
        self.port = free_port()
        self.run_log = tmp / "runs.jsonl"
        self.log = tmp / "backend.log"

    def start(self):
        log = open(self.log, "ab")
        argv = [
            str(self.binary), "sim",
            "--listen", f"127.0.0.1:{self.port}",
            # Fewer database connections than gevent slots, and a per-app limit: Dify's 500
            # (API-key check) and 429 refusals, which the proxy replays as safe.
            "--workers", "1", "--worker-connections", "8", "--db-connections", "6",
            "--app-max-active-requests", "4",
            "--service-time", "300ms",
            "--boot-delay", "1s",
            "--graceful-timeout", "10s",
            "--ping-interval", "2s",
            "--run-log", str(self.run_log),
        ]
        self.proc = CHILDREN.spawn("sim", argv, signal.SIGTERM, 5.0, stdout=log, stderr=log)
        log.close()

    def restart(self):
        # The simulator restarts on SIGHUP like `docker restart`: everything in flight is cut
        # and the port stays closed for --boot-delay.
        self.signal(signal.SIGHUP)

    def run_headers(self, service, events):
        return {"X-Sim-Service-Time": f"{int(service * 1000)}ms", "X-Sim-Events": str(events)}


def gunicorn_tools():
    """(venv, pg_bin, run_as) for the gunicorn leg, or the reason it cannot run."""
    venv = Path(os.environ.get("DIFY_SHAPER_E2E_VENV", REPO / "target/e2e-venv"))
    if not venv.is_absolute():
        venv = REPO / venv
    if not (venv / ".e2e-ready").is_file() or not (venv / "bin/gunicorn").is_file():
        return None, f"no finished venv at {venv} (run `bash e2e/setup.sh`)"
    bins = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file() and (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not bins:
        return None, "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (run `bash e2e/setup.sh`)"
    run_as = None
    if os.geteuid() == 0:
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            return None, "running as root and there is no `postgres` user (run `bash e2e/setup.sh`)"
        run_as = (entry.pw_uid, entry.pw_gid)
    return (venv, bins[-1], run_as), None


class GunicornBackend(Backend):
    name = "gunicorn"

    def __init__(self, tools, tmp):
        self.venv, self.pg_bin, self.run_as = tools
        self.tmp = tmp
        self.port = free_port()
        self.run_log = tmp / "runs.jsonl"
        self.log = tmp / "backend.log"
        self.pid_file = tmp / "gunicorn.pid"
        self.pg_dir = tmp / "pg"
        self.pg_port = free_port()
        self.pg = None

    def _pg_kw(self):
        kw = {"cwd": str(self.pg_dir)}
        if self.run_as:
            kw.update(user=self.run_as[0], group=self.run_as[1], extra_groups=[])
        return kw

    def start_postgres(self):
        self.pg_dir.mkdir()
        if self.run_as:
            os.chown(self.pg_dir, *self.run_as)
        out = subprocess.run(
            [str(self.pg_bin / "initdb"), "--auth=trust", "--username=postgres", "--encoding=UTF8",
             "--locale=C", "--no-sync", "-D", str(self.pg_dir / "data")],
            capture_output=True, timeout=120, **self._pg_kw(),
        )
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr.decode(errors='replace')}")
        log = open(self.tmp / "postgres.log", "ab")
        # SIGINT is PostgreSQL's fast shutdown.
        self.pg = CHILDREN.spawn(
            "postgres",
            [str(self.pg_bin / "postgres"), "-D", str(self.pg_dir / "data"), "-p", str(self.pg_port),
             "-c", f"unix_socket_directories={self.pg_dir}", "-c", "listen_addresses=",
             # Below the 16 gevent slots: PostgreSQL's "too many clients", which the app
             # answers with Dify's API-key 500 and the proxy replays as safe.
             "-c", "max_connections=12", "-c", "superuser_reserved_connections=0",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "shared_buffers=16MB"],
            signal.SIGINT, 10.0, stdout=log, stderr=log, **self._pg_kw(),
        )
        log.close()

        def ready():
            if self.pg.poll() is not None:
                raise RuntimeError("postgres exited")
            r = subprocess.run([str(self.pg_bin / "pg_isready"), "-q", "-h", str(self.pg_dir), "-p", str(self.pg_port)],
                               timeout=10)
            return r.returncode == 0

        if not wait_until(ready, 30.0, 0.1):
            raise RuntimeError(f"postgres not ready within 30 s; see {self.tmp / 'postgres.log'}")

    def start(self):
        if self.pg is None:
            self.start_postgres()
        log = open(self.log, "ab")
        env = dict(os.environ)
        env.update(
            E2E_PG_DSN=f"host={self.pg_dir} port={self.pg_port} user=postgres dbname=postgres",
            E2E_RUN_LOG=str(self.run_log),
            PYTHONDONTWRITEBYTECODE="1",
        )
        argv = [
            str(self.venv / "bin/gunicorn"), "-k", "gevent", "-w", "2", "--worker-connections", "8",
            "-b", f"127.0.0.1:{self.port}", "--pid", str(self.pid_file), "--chdir", str(REPO / "e2e"),
            "--log-level", "warning", "--graceful-timeout", "10", "app:app",
        ]
        # SIGQUIT: gunicorn's quick shutdown, the master reaps its workers.
        self.proc = CHILDREN.spawn("gunicorn", argv, signal.SIGQUIT, 5.0, stdout=log, stderr=log, env=env)
        log.close()

    def restart(self):
        # gunicorn's graceful reload: new workers, the old ones finish what they hold.
        self.signal(signal.SIGHUP)

    def close(self):
        super().close()
        if self.pg is not None:
            CHILDREN.stop(self.pg, signal.SIGINT, 10.0)
            self.pg = None

    def run_headers(self, service, events):
        return {"X-Service-Time": f"{service:.3f}", "X-Events": str(events)}


# ---------------------------------------------------------------------------------------------
# The proxy.

CONFIG = """# Written by scripts/soak/soak.py ({variant}).
[server]
listen = "127.0.0.1:{listen}"
admin = "127.0.0.1:{admin}"
shutdown_grace = "10s"

[log]
format = "json"
level = "info"
access_log = true

[upstreams.api]
servers = ["127.0.0.1:{backend}"]

[upstreams.api.health]
enabled = true
path = "/health"
interval = "{interval}"
timeout = "1s"
rise = 2
fall = 2

[classes.interactive]
queue_timeout = "{interactive_queue}"

[classes.run]
queue_timeout = "30s"

[[routes]]
prefix = "/"
upstream = "api"

[[routes]]
name = "health"
prefix = "/health"
upstream = "api"
class = "control"

[[routes]]
prefix = "/v1/workflows/run"
upstream = "api"
class = "run"
{extra}"""

VALID_VARIANTS = (
    {"interval": "500ms", "interactive_queue": "10s", "extra": ""},
    {"interval": "700ms", "interactive_queue": "12s", "extra": ""},
)
# Each is refused with its place; the running config must stay.
INVALID_VARIANTS = (
    {"interval": "500ms", "interactive_queue": "10s",
     "extra": '\n[[routes]]\nprefix = "/v1/chat-messages"\nupstream = "apii"\n'},
    {"interval": "500ms", "interactive_queue": "ten seconds", "extra": ""},
    {"interval": "500ms", "interactive_queue": "10s", "extra": "\n[[routes]\nprefix = \"/x\"\n"},
)


class Proxy:
    def __init__(self, binary, tmp, backend_port):
        self.binary = binary
        self.tmp = tmp
        self.port = free_port()
        self.admin = free_port()
        self.backend_port = backend_port
        self.config = tmp / "dify-shaper.toml"
        self.log = tmp / "proxy.log"
        self.proc = None
        self.valid_index = 0

    def write_config(self, variant, label):
        text = CONFIG.format(listen=self.port, admin=self.admin, backend=self.backend_port, variant=label, **variant)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    def start(self):
        self.write_config(VALID_VARIANTS[0], "valid 0")
        check = subprocess.run([str(self.binary), "check", str(self.config)], capture_output=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError(f"the soak's config does not check: {check.stdout.decode()} {check.stderr.decode()}")
        log = open(self.log, "ab")
        self.proc = CHILDREN.spawn(
            "dify-shaper", [str(self.binary), "run", "--config", str(self.config)],
            signal.SIGTERM, 15.0, stdout=log, stderr=log,
        )
        log.close()
        ready = wait_until(lambda: http_call(self.admin, "GET", "/ready", timeout=1.0)[0] == 200, 30.0, 0.1)
        if not ready:
            raise RuntimeError(f"dify-shaper not ready within 30 s; see {self.log}")
        healthy = wait_until(lambda: http_call(self.admin, "GET", "/upstreams", timeout=1.0)[0] == 200, 30.0, 0.1)
        if not healthy:
            raise RuntimeError(f"dify-shaper does not see the backend within 30 s; see {self.log}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def status(self):
        status, body = http_call(self.admin, "GET", "/status", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"/status answered {status}")
        return json.loads(body)

    def metrics(self):
        status, body = http_call(self.admin, "GET", "/metrics", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def proc_status(self):
        """VmRSS and RssAnon (kB) and Threads from /proc/PID/status."""
        out = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "Threads"):
                    out[key] = int(value.split()[0])
        except (OSError, ValueError, IndexError):
            pass
        return out

    def rss_kb(self):
        return self.proc_status().get("VmRSS")

    def reloads(self):
        r = self.status()["reload"]
        return r["ok"], r["failed"]

    def ctl(self, *args, timeout=90.0):
        argv = [str(self.binary), "ctl", *args, "--admin", f"127.0.0.1:{self.admin}"]
        try:
            out = subprocess.run(argv, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"`ctl {' '.join(args)}` did not return within {timeout:.0f} s"
        text = (out.stdout + out.stderr).decode(errors="replace").strip().replace("\n", " ")
        return out.returncode == 0, f"`ctl {' '.join(args)}` exit {out.returncode}: {text[:200]}"

    def stop(self):
        if self.proc is not None:
            CHILDREN.stop(self.proc, signal.SIGTERM, 15.0)


def parse_metrics(text):
    """Prometheus text → {name: [(labels dict, value)]}."""
    out = collections.defaultdict(list)
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        if not m:
            continue
        labels = dict(label_re.findall(m.group(3) or ""))
        try:
            out[m.group(1)].append((labels, float(m.group(4))))
        except ValueError:
            pass
    return out


def metric_sum(metrics, name, **match):
    return sum(v for labels, v in metrics.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


# ---------------------------------------------------------------------------------------------
# The load: open loop, one thread per request.


def multipart(request_id, size, rng):
    boundary = f"soakboundary{rng.getrandbits(64):016x}"
    content = rng.randbytes(size) if size <= 65536 else (rng.randbytes(4096) * (size // 4096 + 1))[:size]
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nsoak\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{request_id}.bin\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + content + tail, f"multipart/form-data; boundary={boundary}"


class Aborted(Exception):
    """The client gave up by itself (its planned abort)."""


class TimedOut(Exception):
    """The client's own safety limit: no answer within CLIENT_TIMEOUT."""


class Client:
    """One request and what its client saw."""

    def __init__(self, spec, port):
        self.spec = spec
        self.port = port
        self.rec = {
            "id": spec["id"], "kind": spec["kind"], "abort_at": spec["abort_at"],
            "outcome": None, "status": None, "code": None, "detail": "", "sent": False,
        }

    def _timeout(self):
        now = time.monotonic()
        limit = self.start + CLIENT_TIMEOUT
        if self.abort_deadline is not None and self.abort_deadline < limit:
            left = self.abort_deadline - now
            if left <= 0:
                raise Aborted()
            return left
        left = limit - now
        if left <= 0:
            raise TimedOut()
        return left

    def _arm(self):
        self.sock.settimeout(self._timeout())

    def _expired(self):
        """Which limit a socket timeout hit."""
        if self.abort_deadline is not None and time.monotonic() >= self.abort_deadline - 0.001:
            raise Aborted()
        if time.monotonic() >= self.start + CLIENT_TIMEOUT - 0.001:
            raise TimedOut()

    def run(self):
        spec, rec = self.spec, self.rec
        self.start = time.monotonic()
        self.abort_deadline = self.start + spec["abort_at"] if spec["abort_at"] is not None else None
        self.stage = "connecting"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.sock = None
        resp = None
        try:
            try:
                conn.connect()
            except OSError as e:
                rec.update(outcome="FAIL connect", detail=f"connect to the proxy failed: {e}")
                return rec
            self.sock = conn.sock
            self.stage = "sending"
            self._arm()
            early = None
            try:
                conn.request(spec["method"], spec["path"], body=spec["body"], headers=spec["headers"])
            except (BrokenPipeError, ConnectionResetError) as e:
                # The proxy may answer before it reads a body (a refusal) and close: as curl
                # and urllib3 do, read the answer that is already there.
                early = e
            rec["sent"] = True
            self.stage = "waiting"
            self._arm()
            try:
                resp = conn.getresponse()
            except (ConnectionError, http.client.HTTPException) as e:
                if early is None:
                    raise
                rec.update(outcome="FAIL answer lost (closed while the body was sent)",
                           detail=f"sending: {type(early).__name__}, then reading: {type(e).__name__}")
                return rec
            if early is not None:
                rec["detail"] = f"answered before the whole body was sent ({type(early).__name__})"
            rec["status"] = resp.status
            got_id = resp.getheader("X-Request-Id")
            if got_id != spec["id"]:
                rec["detail"] = f"X-Request-Id {got_id!r}"
            self.stage = "body"
            ctype = resp.getheader("Content-Type") or ""
            if resp.status == 200 and ctype.startswith("text/event-stream"):
                self._read_stream(resp)
            else:
                self._read_body(resp)
            if got_id != spec["id"]:
                rec["outcome"] = "FAIL wrong X-Request-Id"
        except Aborted:
            rec["outcome"] = f"client abort ({self.stage})"
        except TimedOut:
            rec.update(outcome="FAIL no answer in time", detail=f"nothing more after {CLIENT_TIMEOUT:.0f} s ({self.stage})")
        except (OSError, http.client.HTTPException, ValueError) as e:
            rec.update(outcome=f"FAIL {self.stage}: {type(e).__name__}", detail=str(e)[:200])
            if isinstance(e, (socket.timeout, TimeoutError)):
                try:
                    self._expired()
                except Aborted:
                    rec.update(outcome=f"client abort ({self.stage})", detail="")
                except TimedOut:
                    rec.update(outcome="FAIL no answer in time", detail=f"({self.stage})")
        finally:
            # Past the connect, the head went out first: the proxy may have read it.
            if self.stage != "connecting":
                rec["sent"] = True
            self._close(conn, resp)
        return rec

    def _close(self, conn, resp):
        # shutdown first: http.client's file objects keep the socket open until collected.
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for closer in (resp, conn):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001
                pass

    def _read_body(self, resp):
        rec = self.rec
        chunks = []
        while True:
            self._arm()
            try:
                chunk = resp.read1(65536)
            except (socket.timeout, TimeoutError):
                self._expired()
                raise
            if not chunk:
                break
            chunks.append(chunk)
        body = b"".join(chunks)
        # read1 ends quietly at a premature close: what was announced and did not come.
        if resp.length:
            rec.update(outcome="FAIL body cut", detail=f"{len(body)} bytes, {resp.length} announced bytes missing")
            return
        code = None
        try:
            doc = json.loads(body) if body else None
        except ValueError:
            doc = None
        if resp.status >= 400:
            if not isinstance(doc, dict) or not doc.get("code"):
                rec.update(outcome=f"FAIL {resp.status} not in Dify's envelope", detail=repr(body[:120]))
                return
            code = doc["code"]
        elif self.spec["kind"] == "upload" and resp.status == 201:
            size = doc.get("size") if isinstance(doc, dict) else None
            if size != len(self.spec["body"]):
                rec.update(outcome="FAIL upload size", detail=f"backend got {size} bytes of {len(self.spec['body'])}")
                return
        elif resp.status == 200 and not isinstance(doc, dict):
            rec.update(outcome="FAIL body", detail=f"not JSON: {body[:80]!r}")
            return
        rec["code"] = code
        rec["outcome"] = f"{resp.status} {code}" if code else f"{resp.status}"

    def _read_stream(self, resp):
        rec = self.rec
        terminal = None
        events = 0
        data = []
        while True:
            self._arm()
            try:
                line = resp.readline()
            except (socket.timeout, TimeoutError):
                if terminal is not None:
                    break  # everything the stream owes arrived
                self._expired()
                raise
            except (http.client.IncompleteRead, ValueError, OSError) as e:
                if terminal is not None:
                    rec["detail"] = f"framing after the last event: {type(e).__name__}"
                    break
                rec.update(outcome="FAIL stream cut", detail=f"after {events} events: {type(e).__name__} {e}"[:200])
                return
            if not line:
                break
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data:"):
                data.append(line[5:].strip())
            elif not line and data:
                payload = b"\n".join(data)
                data = []
                events += 1
                try:
                    doc = json.loads(payload)
                except ValueError:
                    continue
                if doc.get("event") == "workflow_finished":
                    terminal = "workflow_finished"
                elif doc.get("event") == "error":
                    terminal = f"error {doc.get('code')}"
                if terminal is not None:
                    # The whole answer is in: a planned abort no longer applies.
                    self.abort_deadline = None
        if terminal is None:
            rec.update(outcome="FAIL stream cut", detail=f"ended after {events} events without workflow_finished or error")
            return
        rec["code"] = terminal
        rec["outcome"] = f"200 stream {terminal}"


class Load:
    def __init__(self, backend, proxy_port, rng, rate, duration, tag):
        self.backend = backend
        self.port = proxy_port
        self.rng = rng
        self.rate = rate
        self.duration = duration
        self.tag = tag
        self.max_requests = int(rate * duration * 1.5) + 50
        self.records = []
        self.lock = threading.Lock()
        self.threads = []
        self.skipped = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._schedule, name="load", daemon=True)

    def spec(self, n):
        rng = self.rng
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        rid = f"soak-{self.tag}-{n:06d}-{kind[0]}"
        # Half give up early (mostly while queued or before the answer), half late (mostly
        # mid-stream). The proxy learns its clients' patience from the ones that leave a queue.
        abort_at = None
        if rng.random() < ABORT_SHARE:
            abort_at = rng.uniform(0.05, 2.5) if rng.random() < 0.5 else rng.uniform(2.5, 12.0)
        headers = {
            "Authorization": f"Bearer {rng.choice(TENANTS)}",
            "X-Request-Id": rid,
            "Connection": "close",
        }
        if kind == "upload":
            size = rng.randint(200, 60_000) if rng.random() < 0.7 else rng.randint(70_000, 1_000_000)
            body, ctype = multipart(rid, size, rng)
            headers["Content-Type"] = ctype
            return {"id": rid, "kind": kind, "method": "POST", "path": "/v1/files/upload",
                    "body": body, "headers": headers, "abort_at": abort_at}
        if kind == "blocking":
            service, events = rng.uniform(0.2, 1.5), rng.randint(2, 4)
        else:
            service, events = rng.uniform(0.5, 3.0), rng.randint(3, 8)
        headers.update(self.backend.run_headers(service, events))
        headers["Content-Type"] = "application/json"
        body = json.dumps({
            "inputs": {"q": rid},
            "response_mode": "blocking" if kind == "blocking" else "streaming",
            "user": "soak",
        }).encode()
        return {"id": rid, "kind": kind, "method": "POST", "path": "/v1/workflows/run",
                "body": body, "headers": headers, "abort_at": abort_at}

    def _one(self, spec):
        rec = Client(spec, self.port).run()
        with self.lock:
            self.records.append(rec)

    def _schedule(self):
        start = time.monotonic()
        end = start + self.duration
        t = start
        n = 0
        while n < self.max_requests and not self.stop_event.is_set():
            t += self.rng.expovariate(self.rate)
            if t >= end:
                break
            spec = self.spec(n)
            n += 1
            delay = t - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                break
            self.threads = [th for th in self.threads if th.is_alive()]
            if len(self.threads) >= MAX_CLIENTS:
                self.skipped += 1
                continue
            th = threading.Thread(target=self._one, args=(spec,), name=spec["id"], daemon=True)
            th.start()
            self.threads.append(th)

    def start(self):
        self.thread.start()

    def join(self, timeout):
        """Waits for the schedule to end and every client to finish; returns the stragglers."""
        deadline = time.monotonic() + timeout
        self.thread.join(max(0.0, deadline - time.monotonic()))
        for th in list(self.threads):
            th.join(max(0.0, deadline - time.monotonic()))
        return [th.name for th in self.threads if th.is_alive()]


# ---------------------------------------------------------------------------------------------
# Chaos.


class Chaos:
    def __init__(self, backend, proxy, rng, start_at, end_at):
        self.backend = backend
        self.proxy = proxy
        self.rng = rng
        self.start_at = start_at
        self.end_at = end_at
        self.events = []  # dicts: kind, at, ok, detail, seconds
        self.reloads_sent = {"ok": 0, "failed": 0}
        self.stop_event = threading.Event()
        # Set once every kind has run (or the chaos is over).
        self.first_round = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        window = max(1.0, end_at - start_at)
        self.gap_mean = min(8.0, max(1.0, window / (2 * len(CHAOS_KINDS))))

    def start(self):
        self.thread.start()

    def join(self, timeout):
        self.stop_event.set()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _plan(self):
        # Every kind once first (a short soak still sees each), then at random.
        first = list(CHAOS_KINDS)
        self.rng.shuffle(first)
        yield from first
        while True:
            yield self.rng.choice(CHAOS_KINDS)

    def _run(self):
        try:
            self._steps()
        finally:
            self.first_round.set()

    def _steps(self):
        if self.stop_event.wait(max(0.0, self.start_at - time.monotonic())):
            return
        for n, kind in enumerate(self._plan()):
            if n == len(CHAOS_KINDS):
                self.first_round.set()
            # The first round close together, so that a one-minute soak sees every kind.
            gap = self.rng.expovariate(1.0 if n < len(CHAOS_KINDS) else 1.0 / self.gap_mean)
            if time.monotonic() + gap >= self.end_at or self.stop_event.wait(gap):
                return
            if time.monotonic() >= self.end_at:
                return
            began = time.monotonic()
            try:
                ok, detail = getattr(self, kind)()
            except Exception as e:  # noqa: BLE001 - a chaos step that broke is reported, not fatal
                ok, detail = False, f"{type(e).__name__}: {e}"
            seconds = time.monotonic() - began
            self.events.append({"kind": kind, "at": began - T0, "ok": ok, "detail": detail, "seconds": seconds})
            say(f"chaos: {kind} {'ok' if ok else 'FAILED'} in {seconds:.1f}s: {detail[:150]}")

    # -- the backend

    def _boot_again(self, pause):
        time.sleep(pause)
        self.backend.start()
        if not self.backend.wait_healthy(30.0):
            return False, "backend not healthy within 30 s of its start"
        return True, ""

    def backend_sigterm(self):
        self.backend.signal(signal.SIGTERM)
        clean = self.backend.wait_exit(30.0)
        pause = self.rng.uniform(0.5, 3.0)
        ok, why = self._boot_again(pause)
        return ok, f"graceful exit {'in time' if clean else 'timed out (killed)'}, down {pause:.1f}s {why}".strip()

    def backend_sigkill(self):
        self.backend.signal(signal.SIGKILL, group=True)
        self.backend.wait_exit(10.0)
        pause = self.rng.uniform(0.5, 3.0)
        ok, why = self._boot_again(pause)
        return ok, f"killed, down {pause:.1f}s {why}".strip()

    def backend_stop_cont(self):
        pause = self.rng.uniform(2.0, 6.0)
        self.backend.signal(signal.SIGSTOP, group=True)
        try:
            time.sleep(pause)
        finally:
            self.backend.signal(signal.SIGCONT, group=True)
        return True, f"stopped {pause:.1f}s"

    def backend_restart(self):
        self.backend.restart()
        time.sleep(0.3)
        if not self.backend.wait_healthy(30.0):
            return False, "backend not healthy within 30 s of its restart"
        return True, "SIGHUP (sim: hard restart, 1 s boot; gunicorn: graceful reload)"

    # -- the proxy

    def _reload(self, want_ok):
        before = self.proxy.reloads()
        if want_ok:
            self.proxy.valid_index = (self.proxy.valid_index + 1) % len(VALID_VARIANTS)
            self.proxy.write_config(VALID_VARIANTS[self.proxy.valid_index], f"valid {self.proxy.valid_index}")
        else:
            i = self.rng.randrange(len(INVALID_VARIANTS))
            self.proxy.write_config(INVALID_VARIANTS[i], f"invalid {i}")
        via_admin = not want_ok and self.rng.random() < 0.3
        if via_admin:
            status, body = http_call(self.proxy.admin, "POST", "/reload", timeout=10.0)
            answer = f"POST /reload {status}"
        else:
            self.proxy.proc.send_signal(signal.SIGHUP)
            answer = "SIGHUP"
        index = 0 if want_ok else 1
        after = wait_until(lambda: (lambda r: r if r[index] > before[index] else None)(self.proxy.reloads()), 10.0, 0.05)
        if not want_ok:
            # Back to the running config, so the file always holds what runs.
            self.proxy.write_config(VALID_VARIANTS[self.proxy.valid_index], f"valid {self.proxy.valid_index}")
        self.reloads_sent["ok" if want_ok else "failed"] += 1
        if not after:
            return False, f"{answer}: /status reload counts did not move from {before}"
        if after[1 - index] != before[1 - index]:
            return False, f"{answer}: counted as the wrong result ({before} -> {after})"
        if via_admin and status != 400:
            return False, f"{answer}: expected 400 for an invalid config"
        if not self.proxy.alive():
            return False, f"{answer}: the proxy exited"
        ready = http_call(self.proxy.admin, "GET", "/ready", timeout=2.0)[0]
        if ready != 200:
            return False, f"{answer}: /ready {ready} after the reload"
        return True, f"{answer}: reload counts {before} -> {after}"

    def reload_valid(self):
        return self._reload(True)

    def reload_invalid(self):
        return self._reload(False)

    def drain_resume(self):
        hold = self.rng.uniform(1.0, 4.0)
        if self.rng.random() < 0.5:
            ok, what = self.proxy.ctl("drain", "api")
        else:
            status, _ = http_call(self.proxy.admin, "POST", "/upstreams/api/drain", timeout=10.0)
            ok, what = status == 200, f"POST /upstreams/api/drain {status}"
        time.sleep(hold)
        ok2, what2 = self.proxy.ctl("resume", "api", "--wait", "--timeout", "60s")
        return ok and ok2, f"{what}; held {hold:.1f}s; {what2}"

    def drain_restart_resume(self):
        ok, what = self.proxy.ctl("drain", "api", "--wait", "--timeout", "40s")
        self.backend.signal(signal.SIGTERM)
        clean = self.backend.wait_exit(30.0)
        booted, why = self._boot_again(self.rng.uniform(0.5, 2.0))
        ok2, what2 = self.proxy.ctl("resume", "api", "--wait", "--timeout", "60s")
        return ok and booted and ok2 and clean, f"{what}; backend restarted {why}; {what2}"


# ---------------------------------------------------------------------------------------------
# Reading the logs.


def read_access_log(path):
    """The access-log entries (JSON lines of target dify_shaper::access) and the panic lines."""
    entries, panics = [], []
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode(errors="replace")
            if "panicked" in line:
                panics.append(line.strip()[:400])
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("target") == "dify_shaper::access":
                entries.append(doc)
    return entries, panics


def read_run_log(path):
    runs = []
    if path.exists():
        with open(path, "rb") as f:
            for raw in f:
                try:
                    runs.append(json.loads(raw))
                except ValueError:
                    runs.append({"id": None, "kind": "(unreadable line)", "raw": raw[:200].decode(errors="replace")})
    return runs


# ---------------------------------------------------------------------------------------------
# One leg.


class Check:
    def __init__(self):
        self.rows = []

    def add(self, name, ok, numbers, problems=()):
        self.rows.append((name, ok, numbers, list(problems)))

    @property
    def passed(self):
        return all(ok for _, ok, _, _ in self.rows)


class Monitor:
    """Scrapes /status and /metrics every 2 s and reads the proxy's RSS every second, into a
    timeline (seconds since the load started, VmRSS kB, in flight, queued)."""

    def __init__(self, proxy, path, t0):
        self.proxy = proxy
        self.path = path
        self.t0 = t0
        self.rss_peak = 0
        self.readings = []  # (seconds since the load started, VmRSS kB)
        self.queued = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(15.0)

    def _run(self):
        with open(self.path, "w") as out:
            out.write("seconds\tvmrss_kb\trssanon_kb\tthreads\tin_flight\tqueued\n")
            tick = 0
            while not self.stop_event.wait(1.0):
                st = self.proxy.proc_status()
                rss = st.get("VmRSS", 0)
                self.rss_peak = max(self.rss_peak, rss)
                self.readings.append((time.monotonic() - self.t0, rss))
                in_flight = ""
                if tick % 2 == 0:
                    try:
                        adm = self.proxy.status()["upstreams"]["api"]["admission"]
                        self.proxy.metrics()
                        in_flight, self.queued = adm["in_flight"], adm["queued"]
                    except (OSError, RuntimeError, ValueError, KeyError, http.client.HTTPException):
                        pass
                queued = self.queued if in_flight != "" else ""
                out.write(f"{time.monotonic() - self.t0:.1f}\t{rss}\t{st.get('RssAnon', '')}\t{st.get('Threads', '')}"
                          f"\t{in_flight}\t{queued}\n")
                out.flush()
                tick += 1


def quiet(proxy, timeout):
    """Waits until admission is idle; returns the last /status admission block and metrics."""
    last = {}

    def idle():
        st = proxy.status()["upstreams"]["api"]
        adm, mnt = st["admission"], st["maintenance"]
        met = proxy.metrics()
        last.update(adm=adm, mnt=mnt, met=met)
        return (adm["in_flight"] == 0 and adm["queued"] == 0 and mnt["in_flight"] == 0 and mnt["queued"] == 0
                and metric_sum(met, "dify_shaper_client_requests_active") == 0)

    ok = wait_until(idle, timeout, 0.25)
    return bool(ok), last


def run_leg(leg, args, seed, binary):
    tag = f"{leg[:3]}{seed % 100000:05d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"dify-shaper-soak-{leg}-"))
    os.chmod(tmp, 0o755)  # PostgreSQL runs as its own user and needs to reach its dir
    say(f"== leg {leg}: {args.duration:.0f} s of load at {args.rate:g}/s, seed {seed}, files in {tmp}")
    rng_load = random.Random(f"{seed}-{leg}-load")
    rng_chaos = random.Random(f"{seed}-{leg}-chaos")
    leg_started = time.monotonic()
    if leg == "sim":
        backend = SimBackend(binary, tmp)
    else:
        tools, why = gunicorn_tools()
        backend = GunicornBackend(tools, tmp)
    proxy = Proxy(binary, tmp, backend.port)
    check = Check()
    load = chaos = None
    try:
        backend.start()
        if not backend.wait_healthy(60.0):
            raise RuntimeError(f"the backend did not answer /health within 60 s; see {backend.log}")
        proxy.start()
        say(f"backend {backend.name} on 127.0.0.1:{backend.port} (pid {backend.proc.pid}), dify-shaper on "
            f"127.0.0.1:{proxy.port}, admin 127.0.0.1:{proxy.admin} (pid {proxy.proc.pid})")

        load_start = time.monotonic()
        load_end = load_start + args.duration
        load = Load(backend, proxy.port, rng_load, args.rate, args.duration, tag)
        # Chaos from the first seconds on; the warm-up lasts until every kind of step has run
        # once (at least 10 % of the time, at most half): the memory a proxy needs for a held
        # queue or a restart's burst is working set, not growth, and belongs in the baseline.
        chaos = Chaos(backend, proxy, rng_chaos, load_start + max(3.0, 0.02 * args.duration),
                      load_end - min(5.0, 0.05 * args.duration))
        load.start()
        chaos.start()
        # Scraped as a monitoring system would, from the start: the first /metrics builds
        # what later scrapes reuse, and belongs in the baseline too.
        monitor = Monitor(proxy, tmp / "monitor.tsv", load_start)
        monitor.start()
        chaos.first_round.wait(max(0.0, load_start + 0.5 * args.duration - 3.0 - time.monotonic()))
        time.sleep(max(0.0, load_start + max(10.0, 0.1 * args.duration) - 3.0 - time.monotonic()))
        # The baseline: the most the proxy held during the warm-up. Its allocator keeps the
        # pages of a burst (a held queue released at once) until it allocates much again, so
        # what a burst took is its working set; one reading says only what the moment held.
        readings = []
        for _ in range(12):
            readings.append(proxy.rss_kb() or 0)
            time.sleep(0.25)
        rss_warm_now = sorted(readings)[len(readings) // 2]
        rss_warm = max([rss_warm_now] + [r for _, r in monitor.readings])
        warmup = time.monotonic() - load_start
        say(f"warm-up over after {warmup:.0f} s ({len(chaos.events)} chaos steps): proxy VmRSS {rss_warm_now} kB, "
            f"at most {rss_warm} kB")

        # Progress, once a minute on long runs.
        next_note = time.monotonic() + 60
        while load.thread.is_alive():
            load.thread.join(1.0)
            if time.monotonic() >= next_note:
                next_note += 60
                say(f"progress: {len(load.records)} requests done, {len(chaos.events)} chaos events, "
                    f"VmRSS {proxy.rss_kb()} kB, queued {monitor.queued}")
            if time.monotonic() > load_start + args.duration + 30:
                break
        monitor.stop()
        rss_peak = max(rss_warm or 0, monitor.rss_peak)
        # At the end, under load: the median of the load's last 3 s (the chaos stopped before).
        tail = sorted(r for t, r in monitor.readings if t >= args.duration - 3.0 and r)
        rss_end_load = tail[len(tail) // 2] if tail else None
        say(f"load over: {len(load.records) + sum(t.is_alive() for t in load.threads)} requests sent; "
            "waiting for the chaos step in progress and the clients")
        chaos_done = chaos.join(150.0)
        healed = backend.ensure_running()
        phase = proxy.status()["upstreams"]["api"]["maintenance"]["phase"]
        if phase in ("draining", "drained"):
            proxy.ctl("resume", "api", "--wait", "--timeout", "60s")
        stragglers = load.join(CLIENT_TIMEOUT + 30)
        is_quiet, last = quiet(proxy, 90.0)
        # And idle. An idle allocator keeps the pages of the last burst until it allocates
        # again, a leak keeps them always: the lower of the two readings is what is in use.
        readings = []
        for _ in range(20):
            readings.append(proxy.rss_kb() or 0)
            time.sleep(0.25)
        rss_end_idle = min(readings)
        rss_end = min(r for r in (rss_end_load, rss_end_idle) if r) if (rss_end_load or rss_end_idle) else None
        alive = proxy.alive()
        status = proxy.status() if alive else {}
        met = proxy.metrics() if alive else {}
        wall = time.monotonic() - leg_started
    finally:
        if chaos is not None:
            chaos.stop_event.set()
        proxy.stop()
        backend.close()

    entries, panics = read_access_log(proxy.log)
    with open(tmp / "access.jsonl", "w") as out:
        for e in entries:
            out.write(json.dumps(e) + "\n")
    runs = read_run_log(backend.run_log)
    records = list(load.records)
    with open(tmp / "clients.jsonl", "w") as out:
        for r in records:
            out.write(json.dumps(r) + "\n")
    report = {
        "leg": leg, "seed": seed, "tmp": tmp, "wall": wall, "records": records, "chaos": chaos.events,
        "skipped": load.skipped, "stragglers": stragglers,
    }

    # 1. answered exactly once.
    sent = {r["id"]: r for r in records if r["sent"]}
    not_sent = [r for r in records if not r["sent"]]
    by_id = collections.defaultdict(list)
    for e in entries:
        by_id[e.get("id")].append(e)
    missing = [i for i in sent if len(by_id.get(i, [])) == 0]
    doubled = [i for i in sent if len(by_id.get(i, [])) > 1]
    unknown = [i for i in by_id if i not in sent]
    # Where a client that gave up left: the access log tells a queue from the backend.
    for r in records:
        if (r["outcome"] or "").startswith("client abort"):
            logged = by_id.get(r["id"], [])
            if r["outcome"].endswith("(body)"):
                r["outcome"] = "client abort (mid-stream)" if r["kind"] == "streaming" else "client abort (mid-body)"
            elif r["outcome"].endswith("(sending)"):
                r["outcome"] = "client abort (while sending)"
            elif len(logged) == 1 and logged[0].get("server") in (None, "-"):
                r["outcome"] = "client abort (queued)"
            elif len(logged) == 1:
                r["outcome"] = "client abort (at the backend)"
    client_fail = [r for r in records if r["outcome"] is None or r["outcome"].startswith("FAIL")]
    mismatch = []
    for r in records:
        logged = by_id.get(r["id"], [])
        if len(logged) == 1 and r["status"] is not None and not r["outcome"].startswith("client abort"):
            if logged[0].get("status") != r["status"]:
                mismatch.append(f"{r['id']}: client saw {r['status']}, access log {logged[0].get('status')}")
    problems = (
        [f"not in the access log: {i}" for i in missing[:10]]
        + [f"{len(by_id[i])} times in the access log: {i}" for i in doubled[:10]]
        + [f"in the access log, never sent: {i}" for i in unknown[:10]]
        + [f"{r['id']}: {r['outcome']} {r['detail']}" for r in (client_fail + not_sent)[:15]]
        + mismatch[:10]
        + [f"client still running at the end: {n}" for n in stragglers[:10]]
    )
    aborts = sum(1 for r in records if (r["outcome"] or "").startswith("client abort"))
    check.add(
        "1. every request answered exactly once",
        not (missing or doubled or unknown or client_fail or not_sent or mismatch or stragglers),
        f"sent {len(sent)}, access-log lines {len(entries)}, missing {len(missing)}, twice {len(doubled)}, "
        f"unknown {len(unknown)}; clients: answered {len(records) - aborts - len(client_fail)}, gave up {aborts}, "
        f"failed {len(client_fail)}, not sent {len(not_sent)}, status mismatches {len(mismatch)}, "
        f"still running {len(stragglers)}",
        problems,
    )

    # 2. nothing ran twice.
    run_ids = collections.Counter(r.get("id") for r in runs)
    twice = {i: n for i, n in run_ids.items() if i is not None and n > 1}
    anonymous = run_ids.get(None, 0)
    strangers = [i for i in run_ids if i is not None and i not in sent]
    problems = []
    for i in list(twice)[:10]:
        logged = by_id.get(i, [])
        problems.append(
            f"{i} started {twice[i]}x by the backend ({', '.join(str(r.get('pid')) for r in runs if r.get('id') == i)}); "
            f"access log: " + "; ".join(
                f"status {e.get('status')} retries {e.get('retries')} error {e.get('error')} reply {e.get('reply')}"
                for e in logged))
    problems += [f"run without a request id: {anonymous}"] if anonymous else []
    problems += [f"run for an id nobody sent: {i}" for i in strangers[:10]]
    by_kind = collections.Counter(r.get("kind") for r in runs)
    check.add(
        "2. no non-idempotent request executed twice",
        not twice and not anonymous and not strangers,
        f"backend executed {len(runs)} ({', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()))}) for "
        f"{len(run_ids)} ids; twice or more {len(twice)}, without id {anonymous}, unknown ids {len(strangers)} "
        "(no exception allowed: no route opts into retry_after_processing, and every retry the policy "
        "makes is of a request the backend had not started)",
        problems,
    )

    # 3. no panic, alive.
    check.add(
        "3. no panic, proxy alive at the end",
        alive and not panics,
        f"proxy alive {alive}, 'panicked' lines {len(panics)}",
        panics[:5],
    )

    # 4. RSS.
    rss_ok = rss_warm is not None and rss_end is not None and rss_end <= rss_warm * 1.10
    ratio = (rss_end / rss_warm) if rss_warm and rss_end else float("nan")
    check.add(
        "4. RSS at the end within 10 % of after warm-up",
        rss_ok,
        f"after warm-up ({warmup:.0f} s) {rss_warm} kB (its peak; {rss_warm_now} kB as it ended), at the end "
        f"{rss_end} kB ({(ratio - 1) * 100:+.1f} %; under load {rss_end_load} kB, idle {rss_end_idle} kB); "
        f"peak of the run {rss_peak} kB",
    )

    # 5. idle.
    adm = last.get("adm", {})
    mnt = last.get("mnt", {})
    lm = last.get("met", {})
    check.add(
        "5. queue and in-flight back to 0",
        is_quiet,
        f"/status in_flight {adm.get('in_flight')} (orphaned {adm.get('orphaned')}), queued {adm.get('queued')}, "
        f"maintenance in_flight {mnt.get('in_flight')} queued {mnt.get('queued')} phase {mnt.get('phase')}; "
        f"/metrics client_requests_active {metric_sum(lm, 'dify_shaper_client_requests_active'):g}, "
        f"upstream_in_flight {metric_sum(lm, 'dify_shaper_upstream_in_flight'):g}, "
        f"queue_length {metric_sum(lm, 'dify_shaper_queue_length'):g}",
    )

    # 6. the counters add up.
    problems = []
    if alive:
        log_status = collections.Counter(e.get("status") for e in entries)
        met_status = collections.Counter()
        for labels, v in met.get("dify_shaper_requests_total", []):
            met_status[int(labels.get("status", "0"))] += int(v)
        if log_status != met_status:
            problems.append(f"requests_total by status {dict(sorted(met_status.items()))} != access log "
                            f"{dict(sorted(log_status.items()))}")
        log_codes = collections.Counter(e.get("reply") for e in entries if e.get("reply") not in (None, "-"))
        met_codes = collections.Counter()
        for labels, v in met.get("dify_shaper_proxy_errors_total", []):
            met_codes[labels.get("code")] += int(v)
        met_codes = +met_codes
        if log_codes != met_codes:
            problems.append(f"proxy_errors_total {dict(met_codes)} != access-log replies {dict(log_codes)}")
        a = status["upstreams"]["api"]["admission"]
        shed = dict(a["shed"])
        overloaded = shed.get("backend_overloaded", 0)
        decisions = a["admitted"] + sum(shed.values()) - overloaded + a["abandoned"]
        # Requests that met admission: every request routed to the upstream, less the ones
        # answered before it (404, 413, rate limit); a replay through the queue (Dify's
        # API-key 500) meets it again, and is one of the request's retries.
        before_admission = {"not_found", "payload_too_large", "too_many_requests"}
        reached = [e for e in entries if e.get("upstream") == "api" and e.get("reply") not in before_admission]
        low = len(reached)
        high = low + sum(int(e.get("retries") or 0) for e in reached)
        if not (low <= decisions <= high):
            problems.append(f"admitted {a['admitted']} + shed {sum(shed.values()) - overloaded} + abandoned "
                            f"{a['abandoned']} = {decisions}, not within [{low}, {high}] (requests that reached "
                            f"admission, plus their retries)")
        for field, metric in (("admitted", "dify_shaper_admitted_total"), ("queued_total", "dify_shaper_queued_total"),
                              ("abandoned", "dify_shaper_abandoned_total")):
            mv = metric_sum(met, metric, upstream="api")
            if int(mv) != a[field]:
                problems.append(f"/status {field} {a[field]} != /metrics {metric} {mv:g}")
        for reason, n in shed.items():
            mv = metric_sum(met, "dify_shaper_shed_total", upstream="api", reason=reason)
            if int(mv) != n:
                problems.append(f"/status shed {reason} {n} != /metrics shed_total {mv:g}")
        reload = status["reload"]
        if (reload["ok"], reload["failed"]) != (chaos.reloads_sent["ok"], chaos.reloads_sent["failed"]):
            problems.append(f"/status reload ok {reload['ok']} failed {reload['failed']}, sent "
                            f"{chaos.reloads_sent['ok']} valid and {chaos.reloads_sent['failed']} invalid")
        for result in ("ok", "failed"):
            mv = metric_sum(met, "dify_shaper_config_reloads_total", result=result)
            if int(mv) != reload[result]:
                problems.append(f"/metrics config_reloads_total{{result={result}}} {mv:g} != /status {reload[result]}")
        numbers = (f"requests_total {sum(met_status.values())} = access log {len(entries)}; admitted {a['admitted']} + "
                   f"shed {sum(shed.values()) - overloaded} + abandoned {a['abandoned']} = {decisions} for {low} "
                   f"requests at admission (+{high - low} retries); queued {a['queued_total']}; shed "
                   f"{json.dumps(shed, sort_keys=True)}; reloads ok {reload['ok']} failed {reload['failed']}")
    else:
        numbers = "the proxy is gone: no /status or /metrics to read"
        problems.append(numbers)
    check.add("6. /status and /metrics counters add up", not problems, numbers, problems)

    # The chaos steps themselves (reload refused/accepted, ctl exit codes, backend back up).
    failed_steps = [e for e in chaos.events if not e["ok"]]
    check.add(
        "7. chaos steps did what they should (invalid config refused, ctl ok, backend back)",
        not failed_steps and chaos_done and healed,
        f"{len(chaos.events)} steps, {len(failed_steps)} failed; chaos thread ended {chaos_done}; "
        f"backend healthy at the end {bool(healed)}",
        [f"{e['kind']} at {e['at']:.1f}s: {e['detail']}" for e in failed_steps[:10]],
    )
    report["check"] = check
    return report


def print_summary(report, duration):
    leg, check = report["leg"], report["check"]
    records = report["records"]
    print()
    print(f"==== soak summary: leg {leg}, seed {report['seed']}, {duration:.0f} s of load, "
          f"wall {report['wall']:.0f} s ====")
    print("requests by kind and outcome:")
    table = collections.Counter((r["kind"], r["outcome"] or "FAIL (no outcome)") for r in records)
    print(f"  {'kind':<10} {'outcome':<44} {'count':>6}")
    for (kind, outcome), n in sorted(table.items()):
        print(f"  {kind:<10} {outcome:<44} {n:>6}")
    kinds = collections.Counter(r["kind"] for r in records)
    print(f"  {'all':<10} {'':<44} {len(records):>6}  ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}"
          f"{'; not sent (client cap) ' + str(report['skipped']) if report['skipped'] else ''})")
    print("chaos events:")
    ev = collections.defaultdict(lambda: [0, 0])
    for e in report["chaos"]:
        ev[e["kind"]][0 if e["ok"] else 1] += 1
    print(f"  {'kind':<22} {'count':>6} {'ok':>5} {'failed':>7}")
    for kind in CHAOS_KINDS:
        ok, bad = ev.get(kind, [0, 0])
        print(f"  {kind:<22} {ok + bad:>6} {ok:>5} {bad:>7}")
    print("invariants:")
    for name, ok, numbers, problems in check.rows:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {numbers}")
        for p in problems[:12]:
            print(f"          - {p}")
    print(f"leg {leg}: {'PASS' if check.passed else 'FAIL'}" + ("" if check.passed else f" (files kept in {report['tmp']})"))
    print(flush=True)


def default_binary():
    target = os.environ.get("CARGO_TARGET_DIR")
    base = Path(target) if target else REPO / "target"
    if not base.is_absolute():
        base = REPO / base
    return base / "release" / "dify-shaper"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", default=os.environ.get("SOAK", "10m"), help="load per leg (env SOAK; default 10m)")
    p.add_argument("--seed", type=int, default=int(os.environ["SOAK_SEED"]) if os.environ.get("SOAK_SEED") else None,
                   help="replay a run's random choices (env SOAK_SEED)")
    p.add_argument("--bin", default=os.environ.get("SOAK_BIN") or None, help="the dify-shaper binary (env SOAK_BIN)")
    p.add_argument("--legs", default=os.environ.get("SOAK_LEGS", "sim,gunicorn"), help="sim,gunicorn (env SOAK_LEGS)")
    p.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", "4")), help="requests/s (env SOAK_RATE)")
    p.add_argument("--keep", action="store_true", default=os.environ.get("SOAK_KEEP") == "1",
                   help="keep the temp dirs (env SOAK_KEEP=1)")
    args = p.parse_args()
    args.duration = parse_duration(args.duration)
    if args.duration < 20:
        p.error("--duration: at least 20s (warm-up, chaos and quiet need room)")
    if args.rate <= 0:
        p.error("--rate: above 0")
    binary = Path(args.bin) if args.bin else default_binary()
    if not binary.is_file():
        p.error(f"no dify-shaper binary at {binary}: `cargo build --release --bin dify-shaper`, or set SOAK_BIN")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
    legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    for leg in legs:
        if leg not in ("sim", "gunicorn"):
            p.error(f"--legs: unknown leg {leg!r} (sim, gunicorn)")
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    print(f"soak: seed {seed} (replay with SOAK_SEED={seed}), {args.duration:.0f} s per leg, legs {','.join(legs)}, "
          f"binary {binary}", flush=True)

    reports, failed = [], False
    for leg in legs:
        if leg == "gunicorn":
            tools, why = gunicorn_tools()
            if tools is None:
                if os.environ.get("SOAK_REQUIRE_GUNICORN") == "1":
                    print(f"soak: gunicorn leg unavailable: {why}; SOAK_REQUIRE_GUNICORN=1 makes this a failure", flush=True)
                    failed = True
                else:
                    print(f"soak: gunicorn leg skipped: {why}", flush=True)
                continue
        try:
            report = run_leg(leg, args, seed, binary)
        except Exception as e:  # noqa: BLE001 - a leg that could not run is a failed leg
            say(f"leg {leg} could not run: {type(e).__name__}: {e}")
            failed = True
            CHILDREN.stop_all()
            continue
        print_summary(report, args.duration)
        reports.append(report)
        if report["check"].passed and not args.keep:
            shutil.rmtree(report["tmp"], ignore_errors=True)
        failed = failed or not report["check"].passed
    if reports:
        print("soak: " + ", ".join(f"{r['leg']} {'PASS' if r['check'].passed else 'FAIL'} ({r['wall']:.0f} s)" for r in reports)
              + f"; seed {seed}")
    return 1 if failed or not reports else 0


if __name__ == "__main__":
    sys.exit(main())
