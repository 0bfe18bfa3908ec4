"""Per-implementation sections of REPORT.md: each red check with its verdict, evidence and the printed counterexample.

RES / VERDICTS / ONLY as for tally.py. Runs with root causes also get a row per root cause (root_cause::<case>, with the
printed fix), and the error checks that point at a root cause are collapsed into one row per root cause.
"""
import collections, json, os
from tally import PKG, RES, load_verdicts, root_causes

CAT = {"F1": "precision read as structure", "F2": "undeclarable convention / capability", "F3": "crash reported as a failure of another property",
       "F4": "fan-out of one root cause (message names another cause)", "F4a": "fan-out, attributed: an error row pointing at its root cause",
       "F5": "fully-masked-row convention read as a failure",
       "C3": "contested: NaN in masked K/V reaches the output",
       "P": "precision by design: logits rounded to the input half dtype beyond the suite's limit", "-": ""}
v = load_verdicts()
only = os.environ.get("ONLY", "").split()


def label(a, cat):
    return a if cat == "-" else f"{a} ({cat}: {CAT.get(cat, cat)})"


for n in PKG:
    if not os.path.exists(f"{RES}/{n}.json") or (only and n not in only):
        continue
    t = json.load(open(f"{RES}/{n}.json"))["targets"][0]
    print(f"\n### {n}\n")
    obs = t["observations"]  # a string in older reports, {kind: [values]} in newer ones
    if isinstance(obs, dict):
        obs = "; ".join(f"{k}: {', '.join(x)}" for k, x in obs.items())
    print(f"observed: {obs or '-'}\n")
    print("| check | verdict | root cause | evidence | minimal counterexample (as printed) |")
    print("|---|---|---|---|---|")
    for i, (key, rc) in enumerate(root_causes(t), 1):
        a, cat, root, note = v.get((n, key), ("?", "?", "?", "NO VERDICT"))
        where = f"run, {len(rc['checks'])} checks" if rc.get("checks") else "first probe"
        msg = rc["message"].replace("|", "/")[:220]
        print(f"| `{key}` (#{i}, {where}) | {label(a, cat)} | {root} | {note.replace('|', '/')} | printed: \"{msg}\"; fix: \"{rc.get('fix', '').replace('|', '/')}\" |")
    attributed = collections.defaultdict(list)
    for p in t["properties"]:
        for c in p["checks"]:
            if c["status"] not in ("failed", "error"):
                continue
            key = p["name"] + "::" + c["name"]
            a, cat, root, note = v.get((n, key), ("?", "?", "?", "NO VERDICT"))
            if c["status"] == "error" and c.get("root_cause"):
                attributed[(c["root_cause"], a, cat, root)].append(key)
                continue
            ce = ", ".join(f"{k} {tuple(x) if isinstance(x, list) else x}" for k, x in (c.get("counterexample") or {}).items())
            msg = c["message"].replace("|", "/")[:220]
            print(f"| `{key}` | {label(a, cat)} | {root} | {note.replace('|', '/')} | {ce or '-'}; printed: \"{msg}\" |")
    for (i, a, cat, root), keys in attributed.items():
        names = ", ".join(f"`{k}`" for k in keys)
        print(f"| {len(keys)} error checks pointing at root cause #{i} | {label(a, cat)} | {root} | the message is that root cause's exception | {names} |")
