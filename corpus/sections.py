"""Per-implementation sections of REPORT.md: each red check with its verdict, evidence and the printed counterexample."""
import json, os
from tally import PKG, RES, load_verdicts

CAT = {"F1": "precision read as structure", "F2": "undeclarable convention / capability", "F3": "crash reported as a failure of another property",
       "F4": "fan-out of one root cause (message names another cause)", "F5": "fully-masked-row convention read as a failure",
       "C3": "contested: NaN in masked K/V reaches the output", "-": ""}
v = load_verdicts()
for n in PKG:
    if not os.path.exists(f"{RES}/{n}.json"):
        continue
    t = json.load(open(f"{RES}/{n}.json"))["targets"][0]
    print(f"\n### {n}\n")
    print(f"observed: {t['observations'] or '-'}\n")
    print("| check | verdict | root cause | evidence | minimal counterexample (as printed) |")
    print("|---|---|---|---|---|")
    for p in t["properties"]:
        for c in p["checks"]:
            if c["status"] not in ("failed", "error"):
                continue
            key = p["name"] + "::" + c["name"]
            a, cat, root, note = v.get((n, key), ("?", "?", "?", "NO VERDICT"))
            ce = ", ".join(f"{k} {tuple(x) if isinstance(x, list) else x}" for k, x in (c.get("counterexample") or {}).items())
            msg = c["message"].replace("|", "/")[:220]
            label = a if cat == "-" else f"{a} ({cat}: {CAT.get(cat, cat)})"
            print(f"| `{key}` | {label} | {root} | {note.replace('|', '/')} | {ce or '-'}; printed: \"{msg}\" |")
