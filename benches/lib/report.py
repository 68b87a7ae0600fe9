"""Turns the loadgen JSON files of benches/compare.sh into benches/results/compare.{md,json,png}.

usage: report.py RUNS_DIR SCENARIOS_FILE COMMAND ELAPSED_S
Several rounds of one scenario × target are added up (counts) or their medians taken
(goodput, percentiles; the longest wait is the longest of all rounds). BENCH_NAME names the
output files (default compare, or compare-cold with BENCH_WARMUP=0); only `compare` updates
README.md.
"""
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone

runs_dir, scen_file, command, elapsed = sys.argv[1:5]
OUT = "benches/results"
WARMUP = float(os.environ.get("BENCH_WARMUP", "0"))
# The warm run is the main result (README table); a cold run is kept beside it.
NAME = os.environ.get("BENCH_NAME") or ("compare" if WARMUP > 0 else "compare-cold")
os.makedirs(OUT, exist_ok=True)

scenarios = []
for line in open(scen_file):
    line = line.rstrip("\n")
    if not line:
        continue
    f = line.split("|")
    scenarios.append({"id": f[0], "title": f[1], "sim": f[2], "capacity": int(f[3]),
                      "haproxy_timeout_queue": f[4], "rate": float(f[5]), "duration_s": float(f[6]),
                      "client_timeout": f[7], "stream": f[8] == "1",
                      "sighup_at_s": float(f[9]) if f[9] else None, "targets": f[10].split()})


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip() or \
            subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stderr.strip()
    except Exception:
        return "?"


cpu = "?"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        cpu = l.split(":", 1)[1].strip()
        break
machine = {
    "nproc": os.cpu_count(),
    "cpu": cpu,
    "kernel": platform.release(),
    "mem_gib": round(int(open("/proc/meminfo").readline().split()[1]) / 1048576),
    "nginx": sh("nginx -v 2>&1").replace("nginx version: ", ""),
    "haproxy": sh("haproxy -v | head -1").split(" - ")[0],
    "dify_shaper_commit": sh("git rev-parse --short HEAD"),
    "loadavg_before": os.environ.get("BENCH_LOAD_BEFORE", "?"),
    "loadavg_after": " ".join(open("/proc/loadavg").read().split()[:3]),
    "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def secs(d):
    """A humantime duration of the scenario table (`500ms`, `20s`) in seconds."""
    m = re.fullmatch(r"([0-9.]+)(ms|s)", d)
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else None


def sim_flag(s, flag, default=None):
    m = re.search(rf"--{flag} (\S+)", s["sim"])
    return m.group(1) if m else default


for s in scenarios:
    s["service_time_s"] = secs(sim_flag(s, "service-time", "50ms"))
    s["boot_delay_s"] = secs(sim_flag(s, "boot-delay", "0s"))
    # Runs per second the backend completes at its concurrency (fixed service time).
    s["capacity_per_s"] = round(s["capacity"] / s["service_time_s"], 2) if s["service_time_s"] else None


def runs(sid, t, part=None):
    """The loadgen reports of scenario sid × target t, one per round (part: s5's flood, quiet,
    unloaded)."""
    tail = rf"\.{part}\.json" if part else r"\.json"
    pat = re.compile(rf"{re.escape(sid)}\.{re.escape(t)}\.\d+{tail}")
    return [json.load(open(p)) for p in sorted(glob.glob(f"{runs_dir}/{sid}.{t}.*.json"))
            if pat.fullmatch(os.path.basename(p))]


def aggregate(rs):
    agg = {"rounds": len(rs), "sent": sum(r["sent"] for r in rs), "ok": sum(r["ok"] for r in rs)}
    agg["ok_pct"] = round(100 * agg["ok"] / agg["sent"], 1) if agg["sent"] else 0.0
    agg["goodput"] = round(statistics.median(r["goodput"] for r in rs), 2)
    st, codes, errs = {}, {}, {}
    for r in rs:
        for k, v in r["statuses"].items():
            st[k] = st.get(k, 0) + v
        for k, v in r["codes"].items():
            codes[k] = codes.get(k, 0) + v
        for k, v in r["errors"].items():
            errs[k] = errs.get(k, 0) + v
    agg["statuses"], agg["codes"], agg["errors"] = st, codes, errs
    agg["error_pct"] = round(100 - agg["ok_pct"], 1)
    for key in ("latency_ms", "first_frame_ms", "head_ms"):
        agg[key] = {p: med([r[key].get(p) for r in rs]) for p in ("p50", "p99")}
    maxes = [r["latency_ms"].get("max") for r in rs if r["latency_ms"].get("max") is not None]
    agg["latency_ms"]["max"] = max(maxes) if maxes else None
    agg["timeline"] = rs[0]["timeline"]
    return agg


def time_to_goodput(r, target_per_s):
    """Seconds from the window's start to the end of the first 1 s in which ok answers
    completed at target_per_s or more *and* from which on, to the window's end, they completed
    at target_per_s or more on average: reached and held, not a first second served before a
    backlog built up (None: never)."""
    done = (r.get("ok_done_100ms") or [])[:int(round(r["duration_s"] * 10))]
    for i in range(9, len(done)):
        rest = done[i - 9:]
        if sum(done[i - 9:i + 1]) >= target_per_s and sum(rest) >= target_per_s * len(rest) / 10:
            return round((i + 1) / 10, 1)
    return None


def peak_inflight(sid, t):
    """Per round: the most connections the backend held or had waiting at one sample."""
    peaks = []
    for p in sorted(glob.glob(f"{runs_dir}/{sid}.{t}.*.inflight.json")):
        samples = json.load(open(p))["samples"]
        if samples:
            peaks.append(max(n for _, n in samples))
    return peaks


results = {}
for s in scenarios:
    sid = s["id"]
    results[sid] = {}
    for t in s["targets"]:
        if sid == "s5":
            parts = {k: runs(sid, t, k) for k in ("flood", "quiet", "unloaded")}
            if not all(parts.values()):
                continue
            agg = {k: aggregate(v) for k, v in parts.items()}
            # Both apps together, for the chart and the JSON's uniform fields.
            agg["sent"] = agg["flood"]["sent"] + agg["quiet"]["sent"]
            agg["ok"] = agg["flood"]["ok"] + agg["quiet"]["ok"]
            agg["ok_pct"] = round(100 * agg["ok"] / agg["sent"], 1) if agg["sent"] else 0.0
            agg["error_pct"] = round(100 - agg["ok_pct"], 1)
            agg["goodput"] = round(agg["flood"]["goodput"] + agg["quiet"]["goodput"], 2)
            q, u = agg["quiet"]["latency_ms"]["p99"], agg["unloaded"]["latency_ms"]["p99"]
            agg["quiet_p99_ratio"] = round(q / u, 2) if q and u else None
            results[sid][t] = agg
            continue
        rs = runs(sid, t)
        if not rs:
            continue
        agg = aggregate(rs)
        if sid == "s7":
            agg["time_to_90pct_s"] = med([time_to_goodput(r, 0.9 * s["capacity_per_s"]) for r in rs])
            agg["never_90pct_rounds"] = sum(time_to_goodput(r, 0.9 * s["capacity_per_s"]) is None for r in rs)
            peaks = peak_inflight(sid, t)
            agg["peak_inflight"] = med(peaks)
            agg["peak_inflight_ratio"] = round(agg["peak_inflight"] / s["capacity"], 2) if peaks else None
        if sid == "s8":
            hold, rate, st = s["boot_delay_s"], s["rate"], s["service_time_s"]
            backlog = rate * hold
            spare = s["capacity_per_s"] - rate
            agg["wait_bound_s"] = round(hold + 1.5 * backlog / spare + st, 1)
            agg["longest_wait_s"] = round(agg["latency_ms"]["max"] / 1000, 1) if agg["latency_ms"]["max"] else None
        results[sid][t] = agg

overhead = None
if os.path.exists(f"{OUT}/overhead.json"):
    overhead = json.load(open(f"{OUT}/overhead.json"))
# With --no-overhead the raw-overhead numbers are those of the last overhead.sh run: say which.
overhead_source = ""
if overhead and "--no-overhead" in command:
    when = f", {overhead['measured']}" if overhead.get("measured") else ""
    on = f" on dify-shaper {overhead['commit']}" if overhead.get("commit") else ""
    overhead_source = f"from the last `bash benches/overhead.sh` run{when}{on}, not this one (`--no-overhead`)"

# The first bar the project set itself (ahead of nginx and direct, near HAProxy), checked on
# the numbers above.
bar = []
for s in scenarios[:3]:
    r = results.get(s["id"], {})
    me = r.get("dify-shaper")
    if not me:
        continue
    for other in ("direct", "nginx"):
        if other in r:
            o = r[other]
            ok = me["goodput"] > o["goodput"] or (me["goodput"] >= o["goodput"] and me["ok_pct"] > o["ok_pct"])
            bar.append({"scenario": s["id"], "check": f"ahead of {other}", "pass": ok,
                        "detail": f"goodput {me['goodput']} vs {o['goodput']}/s, ok {me['ok_pct']} vs {o['ok_pct']} %"})
    if "haproxy" in r:
        o = r["haproxy"]
        ok = me["goodput"] >= 0.95 * o["goodput"]
        bar.append({"scenario": s["id"], "check": "goodput within 5 % of HAProxy", "pass": ok,
                    "detail": f"{me['goodput']} vs {o['goodput']}/s ({(me['goodput'] / o['goodput'] - 1) * 100 if o['goodput'] else 0:+.1f} %), ok {me['ok_pct']} vs {o['ok_pct']} %"})
if overhead:
    rows = {r["target"]: r for r in overhead["rows"]}
    if "haproxy" in rows:
        for t in ("dify-shaper", "dify-shaper-noadm"):
            if t in rows:
                ratio = rows[t]["rps"] / rows["haproxy"]["rps"]
                bar.append({"scenario": "overhead", "check": f"{t} requests/s within 10 % of HAProxy",
                            "pass": ratio >= 0.9,
                            "detail": f"{rows[t]['rps']:,.0f} vs {rows['haproxy']['rps']:,.0f} ({ratio:.2f}×)"})

def fmt(x, d=0):
    return "–" if x is None else (f"{x:,.{d}f}" if d else f"{x:,.0f}")


# The requirements of the rows s5–s8, checked for dify-shaper.
reqs = []
me = results.get("s5", {}).get("dify-shaper")
if me:
    q = me["quiet"]
    reqs.append({"scenario": "s5", "check": "quiet app 100 % ok", "pass": q["ok"] == q["sent"],
                 "detail": f"{q['ok']} of {q['sent']} ok ({q['ok_pct']} %)"})
    ratio = me["quiet_p99_ratio"]
    reqs.append({"scenario": "s5", "check": "quiet app p99 ≤ 2× its unloaded p99",
                 "pass": ratio is not None and ratio <= 2.0,
                 "detail": f"{fmt(q['latency_ms']['p99'])} ms vs {fmt(me['unloaded']['latency_ms']['p99'])} ms unloaded ({ratio}×)"})
me, di = results.get("s6", {}).get("dify-shaper"), results.get("s6", {}).get("direct")
if me:
    errs = me["sent"] - me["ok"]
    reqs.append({"scenario": "s6", "check": "no errors", "pass": errs == 0,
                 "detail": f"{errs} not ok of {me['sent']}"})
    reqs.append({"scenario": "s6", "check": "no client timeouts", "pass": me["errors"].get("timeout", 0) == 0,
                 "detail": f"{me['errors'].get('timeout', 0)} timeouts"})
    if di:
        reqs.append({"scenario": "s6", "check": "goodput ≥ direct's", "pass": me["goodput"] >= di["goodput"],
                     "detail": f"{me['goodput']} vs {di['goodput']}/s"})
me = results.get("s7", {}).get("dify-shaper")
if me:
    t90 = me["time_to_90pct_s"]
    reqs.append({"scenario": "s7", "check": "90 % of capacity in goodput within 5 s",
                 "pass": t90 is not None and t90 <= 5.0 and me["never_90pct_rounds"] == 0,
                 "detail": "never" if t90 is None else f"{t90:g} s"})
    pr = me.get("peak_inflight_ratio")
    reqs.append({"scenario": "s7", "check": "peak in flight at the backend ≤ 1.25× capacity",
                 "pass": pr is not None and pr <= 1.25,
                 "detail": f"{fmt(me.get('peak_inflight'))} in flight ({pr}× the capacity)"})
me = results.get("s8", {}).get("dify-shaper")
if me:
    lw = me["longest_wait_s"]
    reqs.append({"scenario": "s8", "check": "longest wait ≤ hold + 1.5 × backlog / spare + one run",
                 "pass": lw is not None and lw <= me["wait_bound_s"],
                 "detail": f"{'–' if lw is None else f'{lw:g}'} s vs {me['wait_bound_s']:g} s, ok {me['ok_pct']} %"})

json.dump({"machine": machine, "command": command, "elapsed_s": int(elapsed), "warmup_s": WARMUP, "scenarios": scenarios,
           "results": results, "overhead": overhead, "bar": bar, "requirements": reqs},
          open(f"{OUT}/{NAME}.json", "w"), indent=1)

LABEL = {"direct": "direct", "nginx": "nginx (Dify's config)", "haproxy": "HAProxy (told capacity)",
         "haproxy-maxconn12": "HAProxy (maxconn 12 = gunicorn slots)", "dify-shaper": "dify-shaper (defaults)"}



def codes_of(a):
    return ", ".join(f"{k}: {v}" for k, v in sorted(a["codes"].items())) or "–"


def table_s5(s, r):
    md = ["Per target, first the quiet app alone (its **unloaded** latency through that target, no warm-up: "
          f"{s['rate'] / 11:.2f}/s is 18 % of capacity), then both apps together from two load generators, each "
          "with its own app key, the flooding one sending 10× the quiet one. **p99 ÷ unloaded**: the quiet app's "
          "p99 under the flood over its own unloaded p99 through the same target. Requirement for dify-shaper: "
          "quiet app 100 % ok and p99 ÷ unloaded ≤ 2.", "",
          "| target | flood: sent | flood: ok % | flood: goodput/s | quiet: sent | quiet: ok % | quiet: not ok (of which timeout) "
          "| quiet: 5xx/4xx by code | quiet: p50 ms | quiet: p99 ms | quiet alone: p99 ms | p99 ÷ unloaded |",
          "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for t in s["targets"]:
        a = r.get(t)
        if not a:
            continue
        f, q, u = a["flood"], a["quiet"], a["unloaded"]
        ratio = "–" if a["quiet_p99_ratio"] is None else f"{a['quiet_p99_ratio']:.2f}×"
        md.append(f"| {LABEL.get(t, t)} | {f['sent']} | {f['ok_pct']:.1f} | {f['goodput']:.2f} | {q['sent']} | "
                  f"{q['ok_pct']:.1f} | {q['sent'] - q['ok']} ({q['errors'].get('timeout', 0)}) | {codes_of(q)} | "
                  f"{fmt(q['latency_ms']['p50'])} | {fmt(q['latency_ms']['p99'])} | {fmt(u['latency_ms']['p99'])} | {ratio} |")
    return md + [""]


def table_s6(s, r):
    di = r.get("direct")
    md = ["A load the backend serves without a single failure when it is reached directly. **not ok**: every "
          "request that did not end ok (non-2xx, refused, reset, broken, client timeout); **vs direct**: goodput "
          "relative to direct's in the same run. Requirement for dify-shaper: 0 not ok, 0 client timeouts, "
          "goodput ≥ direct's.", "",
          "| target | sent | ok % | goodput/s | vs direct | not ok | client timeouts | 5xx/4xx by code | refused | reset | p50 ms | p99 ms |",
          "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for t in s["targets"]:
        a = r.get(t)
        if not a:
            continue
        e = a["errors"]
        vs = f"{a['goodput'] - di['goodput']:+.2f}" if di else "–"
        md.append(f"| {LABEL.get(t, t)} | {a['sent']} | {a['ok_pct']:.1f} | {a['goodput']:.2f} | {vs} | "
                  f"{a['sent'] - a['ok']} | {e.get('timeout', 0)} | {codes_of(a)} | {e.get('refused', 0)} | "
                  f"{e.get('reset', 0)} | {fmt(a['latency_ms']['p50'])} | {fmt(a['latency_ms']['p99'])} |")
    return md + [""]


def table_s7(s, r):
    cap, per_s = s["capacity"], s["capacity_per_s"]
    md = [f"No warm-up: the proxy is started 1 s before the storm. **to 90 %**: seconds from the first request to "
          f"the end of the first second in which ok answers completed at ≥ 90 % of the backend's capacity "
          f"({0.9 * per_s:g}/s of {per_s:g}/s) and from which on they did so on average to the window's end "
          "(reached and held; `never`: not within the window). **peak in "
          f"flight**: the most requests the backend held or had waiting at once (connections on its port, "
          f"established or close-wait, counted with `ss` every 100 ms by benches/lib/inflight.py: runs, "
          f"connections waiting in its listen backlog, runs whose client left), over its capacity of {cap}. "
          "Requirement for dify-shaper: to 90 % ≤ 5 s and peak ÷ capacity ≤ 1.25.", "",
          "| target | sent | ok % | goodput/s | to 90 % of capacity | peak in flight | peak ÷ capacity | client timeouts | 5xx/4xx by code | refused | reset | p50 ms | p99 ms |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for t in s["targets"]:
        a = r.get(t)
        if not a:
            continue
        e = a["errors"]
        t90 = "never" if a["time_to_90pct_s"] is None else f"{a['time_to_90pct_s']:g} s"
        pr = "–" if a.get("peak_inflight_ratio") is None else f"{a['peak_inflight_ratio']:.2f}×"
        md.append(f"| {LABEL.get(t, t)} | {a['sent']} | {a['ok_pct']:.1f} | {a['goodput']:.2f} | {t90} | "
                  f"{fmt(a.get('peak_inflight'))} | {pr} | {e.get('timeout', 0)} | {codes_of(a)} | "
                  f"{e.get('refused', 0)} | {e.get('reset', 0)} | {fmt(a['latency_ms']['p50'])} | {fmt(a['latency_ms']['p99'])} |")
    return md + [""]


def table_s8(s, r):
    hold, rate, per_s, st = s["boot_delay_s"], s["rate"], s["capacity_per_s"], s["service_time_s"]
    backlog, spare = rate * hold, per_s - rate
    bound = hold + 1.5 * backlog / spare + st
    md = [f"The backend restarts {s['sighup_at_s']:g} s into the window and keeps its port closed for {hold:g} s; "
          f"clients wait up to {s['client_timeout']}. **longest wait**: the slowest ok answer (sending to last byte). "
          f"**bound** = hold + 1.5 × backlog ÷ spare capacity + one run = {hold:g} + 1.5 × ({rate:g}/s × {hold:g} s) "
          f"÷ ({per_s:g} − {rate:g})/s + {st:g} = {bound:g} s: the hold, then working the backlog off at the spare "
          "capacity with 50 % slack. Requirement for dify-shaper: longest wait ≤ bound.", "",
          "| target | sent | ok % | goodput/s | longest wait s | bound s | 5xx/4xx by code | refused | reset | broken | client timeouts | p50 ms | p99 ms |",
          "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for t in s["targets"]:
        a = r.get(t)
        if not a:
            continue
        e = a["errors"]
        lw = "–" if a["longest_wait_s"] is None else f"{a['longest_wait_s']:.1f}"
        md.append(f"| {LABEL.get(t, t)} | {a['sent']} | {a['ok_pct']:.1f} | {a['goodput']:.2f} | {lw} | "
                  f"{a['wait_bound_s']:g} | {codes_of(a)} | {e.get('refused', 0)} | {e.get('reset', 0)} | "
                  f"{e.get('broken', 0)} | {e.get('timeout', 0)} | {fmt(a['latency_ms']['p50'])} | {fmt(a['latency_ms']['p99'])} |")
    return md + [""]


SPECIAL = {"s5": table_s5, "s6": table_s6, "s7": table_s7, "s8": table_s8}

md = [f"# Side-by-side benchmark ({machine['date']})", "",
      f"Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['mem_gib']} GiB, Linux {machine['kernel']}; "
      f"nginx {machine['nginx']}, {machine['haproxy']}; dify-shaper {machine['dify_shaper_commit']} (release build). "
      "Load generator, backend simulator and proxy share the cores; "
      f"load average {machine['loadavg_before']} before the run, {machine['loadavg_after']} after "
      "(other work on the machine shows up here).", "",
      f"Command: `{command}` ({int(elapsed) // 60} min {int(elapsed) % 60} s). "
      "Each run: a fresh simulator and a fresh proxy, 1 s to settle, then open-loop arrivals at a fixed rate, "
      "one connection per request, 4 app keys. " +
      (f"Before each measured window the same traffic runs for {WARMUP:g} s (warm-up, not reported; its ok "
       "answers completing inside the window count towards goodput). " if WARMUP > 0 else
       "**Cold start**: no warm-up, every proxy meets the load the moment it starts (dify-shaper has learned nothing). ") +
      "How to read: benches/README.md.", "",
      "- **ok %**: 2xx with the whole body (for SSE: ending with `workflow_finished`, no `error` event) before the client's timeout.",
      "- **goodput**: ok answers that completed inside the send window, per second of it (capacity is the ceiling).",
      "- **errors**: non-2xx answers by status and Dify `code`; `refused` connect refused; `reset` closed/reset before a response; "
      "`broken` body cut; `stream err` stream without its final event or with Dify's `error` event; `timeout` the client gave up.",
      "- **p50/p99**: latency of ok answers, from sending to the last byte (SSE: also to the first frame).", ""]
for s in scenarios:
    r = results.get(s["id"], {})
    if not r:
        continue
    md += [f"## {s['id']}: {s['title']}", "",
           f"Simulator: `{s['sim']}`. Offered {s['rate']:g}/s for {s['duration_s']:g} s; clients give up after "
           f"{s['client_timeout']}" + (f"; SIGHUP at {s['sighup_at_s']:g} s" if s["sighup_at_s"] is not None else "") +
           f". HAProxy: `maxconn {s['capacity']}`, `timeout queue {s['haproxy_timeout_queue']}`.", ""]
    if s["id"] in SPECIAL:
        md += SPECIAL[s["id"]](s, r)
        continue
    ff = s["stream"]
    head = "| target | sent | ok % | goodput/s | 5xx/4xx by code | refused | reset | broken | stream err | timeout | p50 ms | p99 ms |"
    sep = "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    if ff:
        head += " first frame p50 ms | first frame p99 ms |"
        sep += "---:|---:|"
    md += [head, sep]
    for t in s["targets"]:
        a = r.get(t)
        if not a:
            continue
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(a["codes"].items())) or "–"
        e = a["errors"]
        row = (f"| {LABEL.get(t, t)} | {a['sent']} | {a['ok_pct']:.1f} | {a['goodput']:.2f} | {codes} | "
               f"{e.get('refused', 0)} | {e.get('reset', 0)} | {e.get('broken', 0)} | {e.get('stream_error', 0)} | "
               f"{e.get('timeout', 0)} | {fmt(a['latency_ms']['p50'])} | {fmt(a['latency_ms']['p99'])} |")
        if ff:
            row += f" {fmt(a['first_frame_ms']['p50'], 1)} | {fmt(a['first_frame_ms']['p99'], 1)} |"
        md.append(row)
    md.append("")
if overhead:
    md += ["## Raw overhead", ""]
    if overhead_source:
        md += [f"{overhead_source[0].upper()}{overhead_source[1:]}; its own report: benches/results/overhead.md.", ""]
    md += [overhead["markdown"], ""]
if reqs:
    md += ["## Requirements of s5–s8 (dify-shaper), checked", "",
           "| scenario | check | result | numbers |", "|---|---|---|---|"]
    md += [f"| {b['scenario']} | {b['check']} | {'**pass**' if b['pass'] else '**FAIL**'} | {b['detail']} |" for b in reqs]
    md.append("")
if bar:
    md += ["## The first bar (ahead of nginx and direct, near HAProxy), checked", "",
           "| scenario | check | result | numbers |", "|---|---|---|---|"]
    md += [f"| {b['scenario']} | {b['check']} | {'**pass**' if b['pass'] else '**FAIL**'} | {b['detail']} |" for b in bar]
    md.append("")
open(f"{OUT}/{NAME}.md", "w").write("\n".join(md))
print("\n".join(md))

# Chart: goodput and error % per scenario × target.
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

targets = ["direct", "nginx", "haproxy", "haproxy-maxconn12", "dify-shaper"]
colors = {"direct": "#888888", "nginx": "#2a9d8f", "haproxy": "#e9c46a", "haproxy-maxconn12": "#f4a261",
          "dify-shaper": "#e76f51"}
shown = [s for s in scenarios if results.get(s["id"])]
fig, axes = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
w = 0.16
for k, t in enumerate(targets):
    xs, gp, er = [], [], []
    for i, s in enumerate(shown):
        a = results[s["id"]].get(t)
        if a:
            xs.append(i + (k - 2) * w)
            gp.append(a["goodput"])
            er.append(a["error_pct"])
    if xs:
        axes[0].bar(xs, gp, w, label=LABEL[t], color=colors[t])
        axes[1].bar(xs, er, w, label=LABEL[t], color=colors[t])
for s_i, s in enumerate(shown):
    axes[0].hlines(min(s["rate"], s["capacity_per_s"]), s_i - 0.45, s_i + 0.45,
                   colors="black", linestyles="dotted", linewidth=1)
axes[0].set_ylabel("goodput (ok/s)")
axes[0].set_title("goodput per scenario (dotted: the most possible — capacity or offered load)")
axes[1].set_ylabel("not ok (% of sent)")
axes[1].set_title("errors: non-2xx, refused, reset, broken, client timeouts")
axes[1].set_xticks(range(len(shown)))
axes[1].set_xticklabels([s["id"] + ": " + s["title"].split(": ")[0] for s in shown])
axes[0].legend(fontsize=8, ncol=3)
fig.suptitle(f"dify-shaper side by side — {machine['nproc']} cores, {machine['date']}, "
             + (f"after {WARMUP:g} s warm-up" if WARMUP > 0 else "cold start"), fontsize=10)
fig.tight_layout()
fig.savefig(f"{OUT}/{NAME}.png", dpi=110)

# README: the summary table between the markers, generated from the same numbers.
BEGIN, END = "<!-- bench:begin (generated by benches/lib/report.py) -->", "<!-- bench:end -->"
cols = ["direct", "nginx", "haproxy", "dify-shaper"]
summary = [BEGIN, "",
           f"Side by side on {machine['nproc']} cores, {machine['date']}, `{command}` "
           f"(dify-shaper {machine['dify_shaper_commit']}); each run after {WARMUP:g} s of the same traffic. "
           "Goodput in ok answers/s, ok % of sent in brackets; full tables, errors by kind and the "
           "machine: [benches/results/compare.md](benches/results/compare.md).", "",
           "| scenario | direct | nginx (Dify's config) | HAProxy (told capacity) | dify-shaper (no capacity given) |",
           "|---|---:|---:|---:|---:|"]
for s in scenarios:
    r = results.get(s["id"], {})
    if not r:
        continue
    cells = []
    for t in cols:
        a = r.get(t)
        if not a:
            cells.append("–")
        elif s["stream"]:
            cells.append(f"{a['goodput']:.2f} ({a['ok_pct']:.0f} %), first frame p99 {fmt(a['first_frame_ms']['p99'], 1)} ms")
        else:
            cells.append(f"{a['goodput']:.2f} ({a['ok_pct']:.0f} %)")
    summary.append(f"| {s['id']}: {s['title'].split(': ')[0]} | " + " | ".join(cells) + " |")
if overhead:
    rows = {r["target"]: r for r in overhead["rows"]}
    def rps(t):
        return f"{rows[t]['rps']:,.0f}" if t in rows else "–"
    me = rps("dify-shaper")
    if "dify-shaper-noadm" in rows:
        me += f" ({rps('dify-shaper-noadm')} admission off)"
    if "pingora-bare" in rows:
        me += f"; a minimal pingora proxy: {rps('pingora-bare')}"
    if "pingora-bare-nosteal" in rows:
        me += f" ({rps('pingora-bare-nosteal')} on per-thread event loops)"
    source = f"; {overhead_source}" if overhead_source else ""
    summary.append(f"| raw requests/s, 1 thread, 50 conns{source} | {rps('direct')} | {rps('nginx')} | {rps('haproxy')} | {me} |")
if bar:
    failed = [b for b in bar if not b["pass"]]
    summary += ["", f"The first bar: {len(bar) - len(failed)} of {len(bar)} checks pass" +
                ("." if not failed else "; not met: " + "; ".join(f"{b['scenario']} {b['check']} ({b['detail']})" for b in failed) + ".")]
summary += ["", "The same scenarios with no warm-up (a proxy started into the storm): "
            "[benches/results/compare-cold.md](benches/results/compare-cold.md).",
            "", "![goodput and errors per scenario and target](benches/results/compare.png)", "", END]
readme = open("README.md").read() if NAME == "compare" else ""
if NAME == "compare" and BEGIN in readme and END in readme:
    head, rest = readme.split(BEGIN, 1)
    readme = head + "\n".join(summary) + rest.split(END, 1)[1]
    open("README.md", "w").write(readme)
