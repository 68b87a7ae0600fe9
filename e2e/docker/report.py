"""Reads what the docker suite (e2e/docker/run.sh) recorded: the load generator's JSON reports
(WORK/SCENARIO-SIDE.KIND.json, see examples/loadgen.rs) and dify-shaper's /status.

    report.py failed WORK NAME FROM     requests of NAME (both kinds) sent from second FROM of
                                        the load on that did not end ok; prints the count
    report.py cycle STATUS TRIGGER N    exit 0 when upstream `api` ran exactly N maintenance
                                        cycles, none failed, and the last one, started by
                                        TRIGGER, ended ok
    report.py failed_cycle STATUS TEXT  exit 0 when upstream `api`'s one cycle failed, its
                                        error mentions TEXT, and it is serving again
    report.py table WORK                the side-by-side table, markdown
"""

import glob
import json
import os
import sys

KINDS = ("blocking", "streaming")
SIDES = {"direct": "direct to nginx", "shaped": "nginx → dify-shaper"}
SCENARIOS = {
    "restart": "20:00 restart of api + worker",
    "memory": "memory trigger (container stats)",
    "recreate": "dify-shaper recreated",
    "stopped": "dify-shaper stopped 10 s",
    "nomatch": "restart naming a service without containers",
}


def load(path):
    with open(path) as f:
        return json.load(f)


def failed(work, name, start):
    total = 0
    for kind in KINDS:
        path = os.path.join(work, f"{name}.{kind}.json")
        for sent, ok in load(path)["timeline"][start:]:
            total += sent - ok
    return total


def cycle(status_path, trigger, cycles):
    view = load(status_path)["upstreams"]["api"]["maintenance"]
    last = view.get("last_cycle") or {}
    problems = []
    if view.get("cycles") != cycles:
        problems.append(f"cycles {view.get('cycles')}, expected {cycles}")
    if view.get("failures"):
        problems.append(f"failures {view.get('failures')}")
    if last.get("trigger") != trigger or last.get("outcome") != "ok":
        problems.append(f"last cycle {last}")
    if problems and view.get("memory"):
        # What the trigger last read: a reading that failed, or one below the threshold.
        problems.append(f"memory {view['memory']}")
    if problems:
        print("maintenance: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def failed_cycle(status_path, text):
    view = load(status_path)["upstreams"]["api"]["maintenance"]
    last = view.get("last_cycle") or {}
    problems = []
    if view.get("cycles") != 1 or view.get("failures") != 1:
        problems.append(f"cycles {view.get('cycles')}, failures {view.get('failures')}")
    if last.get("outcome") == "ok" or text not in json.dumps(last):
        problems.append(f"last cycle {last}")
    if view.get("phase") != "serving" or view.get("held"):
        problems.append(f"phase {view.get('phase')}, held {view.get('held')}")
    if problems:
        print("maintenance: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def failures_by_kind(report):
    parts = []
    for code, n in sorted(report.get("statuses", {}).items()):
        if not code.startswith("2"):
            parts.append(f"{code}: {n}")
    for kind, n in sorted(report.get("errors", {}).items()):
        if n:
            parts.append(f"{kind.replace('_', ' ')}: {n}")
    return ", ".join(parts) or "–"


def table(work):
    rows = []
    for path in sorted(glob.glob(os.path.join(work, "*.json"))):
        base = os.path.basename(path)[: -len(".json")]
        if base.count(".") != 1 or not base.endswith(KINDS):
            continue
        name, kind = base.split(".")
        scenario, _, side = name.rpartition("-")
        report = load(path)
        ok = report["ok"]
        sent = report["sent"]
        rows.append(
            (
                list(SCENARIOS).index(scenario) if scenario in SCENARIOS else 99,
                side != "direct",
                kind,
                f"| {SCENARIOS.get(scenario, scenario)} | {SIDES.get(side, side)} | {kind} | {sent} | {ok} "
                f"| {sent - ok} | {failures_by_kind(report)} | {report['latency_ms'].get('p99', '–')} |",
            )
        )
    print("| scenario | path | kind | sent | ok | failed | failed by kind | p99 ms (ok) |")
    print("|---|---|---|---:|---:|---:|---|---:|")
    for row in sorted(rows):
        print(row[-1])


def main(argv):
    if len(argv) >= 2 and argv[1] == "failed" and len(argv) == 5:
        print(failed(argv[2], argv[3], int(argv[4])))
        return 0
    if len(argv) == 4 and argv[1] == "failed_cycle":
        return failed_cycle(argv[2], argv[3])
    if len(argv) == 5 and argv[1] == "cycle":
        return cycle(argv[2], argv[3], int(argv[4]))
    if len(argv) == 3 and argv[1] == "table":
        table(argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
