"""One progress line from a loadgen JSON file (benches/compare.sh)."""
import json
import sys

r = json.load(open(sys.argv[1]))
errs = {k: v for k, v in r["errors"].items() if v}
print(f"sent {r['sent']} ok {r['ok_pct']}% goodput {r['goodput']}/s p50 {r['latency_ms']['p50']} "
      f"p99 {r['latency_ms']['p99']} ff50 {r['first_frame_ms']['p50']} statuses {r['statuses']} errors {errs}")
import os
st = sys.argv[1].replace(".json", ".status.json")
if os.path.exists(st):
    try:
        s = json.load(open(st))
        def find(o):
            if isinstance(o, dict):
                if "latency_ratio" in o and "limit" in o:
                    return o
                for v in o.values():
                    f = find(v)
                    if f:
                        return f
            elif isinstance(o, list):
                for v in o:
                    f = find(v)
                    if f:
                        return f
        a = find(s)
        if a:
            print(f"    dify-shaper at the end: limit {a['limit']} ceiling {a['ceiling']} latency_ratio {a['latency_ratio']} "
                  f"last_change {a['last_change']} shed {a['shed']} wait_max_ms {a['wait_max_ms']} patience_ms {a['patience_ms']} abandoned {a['abandoned']}")
    except Exception as e:
        print(f"    (status unreadable: {e})")
