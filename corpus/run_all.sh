#!/usr/bin/env bash
# Run attncheck on every corpus target, one at a time, with the attncheck of this checkout (the repository root is
# put first on PYTHONPATH, before any installed copy).
#   bash run_all.sh                  # all targets, into results/current/
#   ATTNCHECK=NAME bash run_all.sh   # into results/NAME/
#   bash run_all.sh TARGET ...       # only these targets (rows are appended to times.tsv; the last one counts)
# Writes results/<name>/TARGET.json, TARGET.txt (the terminal report) and times.tsv (target, exit status, wall
# seconds, a fingerprint of attncheck's sources: runs with the same fingerprint ran the same attncheck).
cd "$(dirname "$0")"
root="$(cd .. && pwd)"
mode="${ATTNCHECK:-current}"
export CI=true KERAS_BACKEND=torch  # CI=true: the ci profile (derandomised); keras 3 on its torch backend
export PYTHONPATH="$PWD:$root${PYTHONPATH:+:$PYTHONPATH}"
fp=$(cd "$root" && find -L attncheck -name "*.py" -not -path "*__pycache__*" | sort | xargs cat | sha256sum | cut -c1-12)
ALL="xt_attend xt_attend_flash xt_attend_softcap xt_attend_sinks mea_attention mea_chunked mea_flash mea_flash_f32 ring_flash ring_flash_f32 keras_dpa diffusers_attn hf_gpt2_upcast hf_t5 hf_whisper_eager"
out="results/$mode"
mkdir -p "$out"
for name in ${@:-$ALL}; do
  start=$(date +%s.%N)
  python -m attncheck verify "targets:$name" --max-examples 20 --json "$out/$name.json" -q > "$out/$name.txt" 2>&1
  rc=$?
  end=$(date +%s.%N)
  printf '%s\t%s\t%.0f\t%s\n' "$name" "$rc" "$(echo "$end - $start" | bc)" "$fp" | tee -a "$out/times.tsv"
done
