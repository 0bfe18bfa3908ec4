"""Tally results/<mode>/*.json against a verdicts file: per-target table, coverage check, counts by category.

    RES=results/baseline python tally.py                                   # against verdicts.tsv (the default)
    RES=results/declared VERDICTS=verdicts_declared.tsv python tally.py    # a run with root causes
    ONLY="name ..." restricts the table to some targets.

Judged items are the red checks (status failed or error; key property::check) and, for runs whose JSON has them, the
root causes (key root_cause::<case>, both the first probe's and those of the run). Each gets one verdict line.
"""
import collections, json, os, sys
RES = os.environ.get("RES", "results/baseline")
VERDICTS = os.environ.get("VERDICTS", "verdicts.tsv")
PKG = {
    "xt_attend": "x-transformers 2.31.10", "xt_attend_flash": "x-transformers 2.31.10",
    "xt_attend_softcap": "x-transformers 2.31.10", "xt_attend_sinks": "x-transformers 2.31.10",
    "mea_attention": "memory-efficient-attention-pytorch 0.1.6", "mea_chunked": "memory-efficient-attention-pytorch 0.1.6",
    "mea_flash": "memory-efficient-attention-pytorch 0.1.6", "mea_flash_f32": "memory-efficient-attention-pytorch 0.1.6",
    "ring_flash": "ring-attention-pytorch 0.5.20", "ring_flash_f32": "ring-attention-pytorch 0.5.20",
    "keras_dpa": "keras 3.15.1 (torch backend)", "diffusers_attn": "diffusers 0.42.1",
    "hf_gpt2_upcast": "transformers 5.24.0", "hf_t5": "transformers 5.24.0", "hf_whisper_eager": "transformers 5.24.0",
}


def load_verdicts(path=None):
    """{(target, check): (verdict, category, root, note)} from a verdicts TSV."""
    v = {}
    for line in open(path or VERDICTS):
        if line.startswith("#") or not line.strip():
            continue
        t, chk, a, cat, root, note = line.rstrip("\n").split("\t")
        v[(t, chk)] = (a, cat, root, note)
    return v


def target_json(n, res=None):
    return json.load(open(f"{res or RES}/{n}.json"))["targets"][0]


def red_checks(t):
    """[(property::check, check dict)] for every check whose status is failed or error, except errors that the
    report attributes to a root cause of the run (printed once there, judged as that root cause)."""
    return [(p["name"] + "::" + c["name"], c) for p in t["properties"] for c in p["checks"]
            if c["status"] == "failed" or (c["status"] == "error" and not c.get("root_cause"))]


def root_causes(t):
    """[(root_cause::<case>, entry)]: the first probe's root causes and those of the run (absent in old runs)."""
    def key(rc):  # a root cause of the run is named by its exception, not by how many checks met it
        return "raised: " + rc["message"].split(" raised ", 1)[-1][:60] if "checks" in rc else rc["case"]

    return [("root_cause::" + key(rc), rc) for rc in t.get("root_causes") or []]


def declared(caps):
    """The declared fields that differ from the SDPA contract."""
    d = []
    if caps["layout"] != "BHLD": d.append(f"layout={caps['layout']}")
    if sorted(caps["masks"]) != ["bool", "float"]: d.append("masks=" + (",".join(caps["masks"]) or "none"))
    if sorted(caps.get("mask_shapes", ["LS", "full", "key_padding"])) != ["LS", "full", "key_padding"]:
        d.append("mask_shapes=" + ",".join(caps["mask_shapes"]))
    if caps["causal"] != "top-left": d.append(f"causal={caps['causal'] or 'none'}")
    if caps.get("lengths", "any") != "any": d.append(f"lengths={caps['lengths']}")
    for f in ("gqa", "scale", "value_dim"):
        if not caps[f]: d.append(f"{f}=no")
    if caps["gqa"] and caps.get("gqa_mapping", "grouped") != "grouped": d.append(f"gqa_mapping={caps['gqa_mapping']}")
    if caps.get("unscaled"): d.append("unscaled")
    if caps["dropout"]: d.append("dropout" if caps["dropout"] in (True, "inverted") else f"dropout={caps['dropout']}")
    if len(caps["dtypes"]) != 4: d.append("dtypes=" + ",".join(caps["dtypes"]))
    if caps.get("compute_dtype"): d.append(f"compute_dtype={caps['compute_dtype']}")
    if caps.get("features"): d.append("features=" + ",".join(sorted(caps["features"])))
    return d


def main():
    verdicts = load_verdicts()
    times = {}
    for line in open(f"{RES}/times.tsv"):
        n, rc, s, fp = line.rstrip("\n").split("\t")
        times[n] = (rc, s, fp)  # a name run twice: the last row counts
    only = os.environ.get("ONLY", "").split()
    order = [n for n in PKG if os.path.exists(f"{RES}/{n}.json") and (not only or n in only)]
    with_roots = any("root_causes" in target_json(n) for n in order)
    tot = collections.Counter(); cats = collections.Counter(); roots = collections.defaultdict(set); missing = []
    rtot = collections.Counter(); rcats = collections.Counter()
    head = "| implementation | package | declared (differs from SDPA) | properties passed / failed / skipped | red checks | TRUE | FALSE | contested |"
    if with_roots:
        head += " root causes (TRUE / FALSE) |"
    print(head + " wall s |")
    print("|---" * (head.count("|")) + "|")
    for n in order:
        t = target_json(n)
        st = collections.Counter(p["status"] for p in t["properties"])
        red = [k for k, _ in red_checks(t)]
        c = collections.Counter()
        for chk in red:
            v = verdicts.get((n, chk))
            if v is None:
                missing.append((n, chk)); continue
            c[v[0]] += 1; tot[v[0]] += 1; cats[(v[0], v[1])] += 1; roots[(v[0], v[2])].add(n)
        rc = collections.Counter()
        for key, _ in root_causes(t):
            v = verdicts.get((n, key))
            if v is None:
                missing.append((n, key)); continue
            rc[v[0]] += 1; rtot[v[0]] += 1; rcats[(v[0], v[1])] += 1; roots[(v[0], v[2])].add(n)
        row = (f"| {n} | {PKG[n]} | {' '.join(declared(t['capabilities'])) or '-'} | {st['passed']} / {st['failed'] + st['error']} / "
               f"{st['skipped'] + st['blocked']} | {len(red)} | {c['TRUE']} | {c['FALSE']} | {c['CONTESTED']} |")
        if with_roots:
            row += f" {sum(rc.values())} ({rc['TRUE']} / {rc['FALSE']}) |"
        print(row + f" {times.get(n, ('', '?'))[1]} |")
    print()
    print("totals:", dict(tot), "red checks:", sum(tot.values()))
    for k, v in sorted(cats.items()): print("  ", k, v)
    if with_roots:
        print("root causes:", dict(rtot), "judged:", sum(rtot.values()))
        for k, v in sorted(rcats.items()): print("  ", k, v)
    print("true root causes:", sorted({r for (v, r) in roots if v == "TRUE"}))
    print("fingerprints:", sorted({v[2] for n, v in times.items() if n in order}))
    if missing:
        print("NO VERDICT:", missing)
    judged = {n: {k for k, _ in red_checks(target_json(n)) + root_causes(target_json(n))} for n in order}
    stale = [k for k in verdicts if k[0] in order and k[1] not in judged[k[0]]]
    if stale:
        print("VERDICT WITHOUT RED CHECK:", stale)


if __name__ == "__main__":
    main()
