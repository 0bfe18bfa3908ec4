"""Summarise results/*.json: property counts and every failed check (message + counterexample)."""
import json, sys, glob, os
RES = os.environ.get("RES", "results/baseline")
times = {}
if os.path.exists(f"{RES}/times.tsv"):
    for line in open(f"{RES}/times.tsv"):
        n, rc, s, *_ = line.rstrip("\n").split("\t"); times[n] = (rc, s)
names = sys.argv[1:] or [os.path.basename(p)[:-5] for p in sorted(glob.glob(f"{RES}/*.json"))]
for n in names:
    d = json.load(open(f"{RES}/{n}.json")); t = d["targets"][0]
    props = t["properties"]; st = [p["status"] for p in props]
    fc = sum(1 for p in props for c in p.get("checks", []) if c["status"] == "failed")
    print(f"## {n}: passed {st.count('passed')} failed {st.count('failed')} skipped {st.count('skipped')} other {[s for s in st if s not in ('passed','failed','skipped')]} failed-checks {fc} time {times.get(n)}")
    print("   caps:", t["capabilities"].get("layout"), "obs:", t["observations"])
    for p in props:
        for c in p.get("checks", []):
            if c["status"] == "failed":
                ce = ", ".join(f"{k}={v}" for k, v in (c.get("counterexample") or {}).items())
                print(f"- {p['name']}::{c['name']}\n    {c['message'][:400]}\n    CE: {ce}")
