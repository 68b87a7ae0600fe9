"""Samples how many requests the simulator on PORT holds, every INTERVAL s, until SIGTERM.

usage: inflight.py PORT INTERVAL_S OUT_JSON

The simulator has no stats endpoint, so this counts from the kernel (`ss`, filtered there):
TCP sockets with local port PORT that are ESTABLISHED (a connection the simulator accepted,
or one waiting un-accepted in its listen backlog: both are requests the backend has been
given) or CLOSE-WAIT (the client left but the run goes on: the simulator, like
gunicorn+gevent, does not notice). An idle keep-alive connection counts too: it holds a
gunicorn slot. Writes {"port", "interval_s", "samples": [[t_s, n], …]} with t from the
sampler's start (benches/compare.sh starts it right before the load generator).
"""
import json
import signal
import subprocess
import sys
import time

port, interval, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)
cmd = ["ss", "-Htn", "state", "established", "state", "close-wait", f"( sport = :{port} )"]
samples = []
t0 = time.monotonic()
due = t0
try:
    while not stop:
        now = time.monotonic()
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=2).stdout
            samples.append([round(now - t0, 3), sum(1 for l in text.splitlines() if l.strip())])
        except subprocess.TimeoutExpired:
            pass
        due += interval
        # Behind schedule (a busy machine): sample again at once rather than drift further.
        time.sleep(max(0.0, due - time.monotonic()))
finally:
    with open(out, "w") as f:
        json.dump({"port": port, "interval_s": interval, "samples": samples}, f)
