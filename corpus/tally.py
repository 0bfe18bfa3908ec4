"""Tally results/<mode>/*.json against verdicts.tsv: per-target table, coverage check, counts by category."""
import collections, json, os, sys
RES = os.environ.get("RES", "results/baseline")
PKG = {
    "xt_attend": "x-transformers 2.31.10", "xt_attend_flash": "x-transformers 2.31.10",
    "mea_attention": "memory-efficient-attention-pytorch 0.1.6", "mea_chunked": "memory-efficient-attention-pytorch 0.1.6",
    "mea_flash": "memory-efficient-attention-pytorch 0.1.6", "mea_flash_f32": "memory-efficient-attention-pytorch 0.1.6",
    "ring_flash": "ring-attention-pytorch 0.5.20", "ring_flash_f32": "ring-attention-pytorch 0.5.20",
    "keras_dpa": "keras 3.15.1 (torch backend)", "diffusers_attn": "diffusers 0.42.1",
    "hf_gpt2_upcast": "transformers 5.24.0", "hf_t5": "transformers 5.24.0", "hf_whisper_eager": "transformers 5.24.0",
}
def load_verdicts():
    v = {}
    for line in open("verdicts.tsv"):
        if line.startswith("#") or not line.strip():
            continue
        t, chk, a, cat, root, note = line.rstrip("\n").split("\t")
        v[(t, chk)] = (a, cat, root, note)
    return v


def main():
    verdicts = {}
    for line in open("verdicts.tsv"):
        if line.startswith("#") or not line.strip():
            continue
        t, chk, v, cat, root, note = line.rstrip("\n").split("\t")
        verdicts[(t, chk)] = (v, cat, root, note)
    times = {}
    for line in open(f"{RES}/times.tsv"):
        n, rc, s, fp = line.rstrip("\n").split("\t")
        times[n] = (rc, s, fp)
    only = os.environ.get("ONLY", "").split()
    order = [n for n in PKG if os.path.exists(f"{RES}/{n}.json") and (not only or n in only)]
    tot = collections.Counter(); cats = collections.Counter(); roots = collections.defaultdict(set); missing = []
    print("| implementation | package | declared (differs from SDPA) | properties passed / failed / skipped | red checks | TRUE | FALSE | contested | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in order:
        t = json.load(open(f"{RES}/{n}.json"))["targets"][0]
        caps = t["capabilities"]; d = []
        if caps["layout"] != "BHLD": d.append(f"layout={caps['layout']}")
        if sorted(caps["masks"]) != ["bool", "float"]: d.append("masks=" + (",".join(caps["masks"]) or "none"))
        if caps["causal"] != "top-left": d.append(f"causal={caps['causal'] or 'none'}")
        for f in ("gqa", "scale", "value_dim"):
            if not caps[f]: d.append(f"{f}=no")
        if caps["dropout"]: d.append("dropout")
        if len(caps["dtypes"]) != 4: d.append("dtypes=" + ",".join(caps["dtypes"]))
        st = collections.Counter(p["status"] for p in t["properties"])
        red = [(p["name"] + "::" + c["name"]) for p in t["properties"] for c in p["checks"] if c["status"] in ("failed", "error")]
        c = collections.Counter()
        for chk in red:
            v = verdicts.get((n, chk))
            if v is None:
                missing.append((n, chk)); continue
            c[v[0]] += 1; tot[v[0]] += 1; cats[(v[0], v[1])] += 1; roots[(v[0], v[2])].add(n)
        print(f"| {n} | {PKG[n]} | {' '.join(d) or '-'} | {st['passed']} / {st['failed'] + st['error']} / {st['skipped']} | {len(red)} | {c['TRUE']} | {c['FALSE']} | {c['CONTESTED']} | {times.get(n, ('', '?'))[1]} |")
    print()
    print("totals:", dict(tot), "red checks:", sum(tot.values()))
    for k, v in sorted(cats.items()): print("  ", k, v)
    print("true root causes:", sorted(r for (v, r) in roots if v == "TRUE"))
    print("fingerprints:", sorted({v[2] for v in times.values()}))
    if missing:
        print("NO VERDICT:", missing)
    stale = [k for k in verdicts if k[0] in order and k[1] not in {(p["name"] + "::" + c["name"]) for p in json.load(open(f"{RES}/{k[0]}.json"))["targets"][0]["properties"] for c in p["checks"] if c["status"] in ("failed", "error")}]
    if stale:
        print("VERDICT WITHOUT RED CHECK:", stale)


if __name__ == "__main__":
    main()
