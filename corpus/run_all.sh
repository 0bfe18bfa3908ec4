#!/usr/bin/env bash
# Rerun attncheck on every corpus target, one at a time (2 cores).
#   bash run_all.sh                 # against the installed attncheck (/work/main, editable): results/main/
#   ATTNCHECK=baseline bash run_all.sh   # against the frozen pre-rework copy in baseline/: results/baseline/
#   ATTNCHECK=declared bash run_all.sh   # the installed attncheck again, into results/declared/ (any other name: results/NAME/)
#   bash run_all.sh NAME ...        # only these targets
# Writes results/<mode>/NAME.json, NAME.txt and times.tsv (name, exit code, wall seconds, attncheck fingerprint).
cd "$(dirname "$0")"
mode="${ATTNCHECK:-main}"
export CI=true KERAS_BACKEND=torch
if [ "$mode" = baseline ]; then
  export PYTHONPATH="$PWD/baseline:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  src="$PWD/baseline"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  src="$(python -c 'import attncheck, os; print(os.path.dirname(os.path.realpath(attncheck.__file__)))')/.."
fi
fp=$(cd "$src" && find -L . -name "*.py" -path "*attncheck*" -not -path "*__pycache__*" -not -path "./build/*" -not -path "./tests/*" | sort | xargs cat | sha256sum | cut -c1-12)
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
