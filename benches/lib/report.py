"""Turns the loadgen JSON files of benches/compare.sh into benches/results/compare.{md,json,png}.

usage: report.py RUNS_DIR SCENARIOS_FILE COMMAND ELAPSED_S
Several rounds of one scenario × target are added up (counts) or their medians taken
(goodput, percentiles).
"""
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

runs_dir, scen_file, command, elapsed = sys.argv[1:5]
OUT = "benches/results"
WARMUP = float(os.environ.get("BENCH_WARMUP", "0"))
# The warm run is the main result (README table); a cold run is kept beside it.
NAME = "compare" if WARMUP > 0 else "compare-cold"
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


results = {}
for s in scenarios:
    results[s["id"]] = {}
    for t in s["targets"]:
        rs = [json.load(open(p)) for p in sorted(glob.glob(f"{runs_dir}/{s['id']}.{t}.*.json")) if not p.endswith(".status.json")]
        if not rs:
            continue
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
        agg["timeline"] = rs[0]["timeline"]
        results[s["id"]][t] = agg

overhead = None
if os.path.exists(f"{OUT}/overhead.json"):
    overhead = json.load(open(f"{OUT}/overhead.json"))
# With --no-overhead the raw-overhead numbers are those of the last overhead.sh run: say which.
overhead_source = ""
if overhead and "--no-overhead" in command:
    when = f", {overhead['measured']}" if overhead.get("measured") else ""
    on = f" on dify-shaper {overhead['commit']}" if overhead.get("commit") else ""
    overhead_source = f"from the last `bash benches/overhead.sh` run{when}{on}, not this one (`--no-overhead`)"

# The bar, checked on the numbers above.
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

json.dump({"machine": machine, "command": command, "elapsed_s": int(elapsed), "warmup_s": WARMUP, "scenarios": scenarios,
           "results": results, "overhead": overhead, "bar": bar},
          open(f"{OUT}/{NAME}.json", "w"), indent=1)

LABEL = {"direct": "direct", "nginx": "nginx (Dify's config)", "haproxy": "HAProxy (told capacity)",
         "haproxy-maxconn12": "HAProxy (maxconn 12 = gunicorn slots)", "dify-shaper": "dify-shaper (defaults)"}


def fmt(x, d=0):
    return "–" if x is None else (f"{x:,.{d}f}" if d else f"{x:,.0f}")


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
if bar:
    md += ["## The issue's bar (#7), checked", "",
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
    axes[0].hlines(s["rate"] if s["id"] in ("s3", "s4") else
                   (s["capacity"] / 2.0 if s["id"] == "s1" else 4.0), s_i - 0.45, s_i + 0.45,
                   colors="black", linestyles="dotted", linewidth=1)
axes[0].set_ylabel("goodput (ok/s)")
axes[0].set_title("goodput per scenario (dotted: the most possible — capacity or offered load)")
axes[1].set_ylabel("not ok (% of sent)")
axes[1].set_title("errors: non-2xx, refused, reset, broken, client timeouts")
axes[1].set_xticks(range(len(shown)))
axes[1].set_xticklabels([s["id"] + ": " + s["title"].split(":")[0] for s in shown])
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
    summary.append(f"| {s['id']}: {s['title'].split(':')[0]} | " + " | ".join(cells) + " |")
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
    summary += ["", f"The issue's bar: {len(bar) - len(failed)} of {len(bar)} checks pass" +
                ("." if not failed else "; not met: " + "; ".join(f"{b['scenario']} {b['check']} ({b['detail']})" for b in failed) + ".")]
summary += ["", "The same scenarios with no warm-up (a proxy started into the storm): "
            "[benches/results/compare-cold.md](benches/results/compare-cold.md).",
            "", "![goodput and errors per scenario and target](benches/results/compare.png)", "", END]
readme = open("README.md").read()
if NAME == "compare" and BEGIN in readme and END in readme:
    head, rest = readme.split(BEGIN, 1)
    readme = head + "\n".join(summary) + rest.split(END, 1)[1]
    open("README.md", "w").write(readme)
