#!/usr/bin/env bash
# Rebuild REPORT.md from REPORT_head.md, the tallies of results/baseline against verdicts.tsv, REPORT_tail.md,
# then REPORT_declared.md and the tallies of results/declared against verdicts_declared.tsv, REPORT_reviewed.md and
# the tally of results/reviewed, REPORT_integrity.md and the tally and sections of results/integrity against
# verdicts_integrity.tsv, then REPORT_current.md and those of results/current against verdicts_current.tsv.
cd "$(dirname "$0")"
MAIN="xt_attend xt_attend_flash mea_attention mea_chunked mea_flash ring_flash keras_dpa diffusers_attn hf_gpt2_upcast hf_t5 hf_whisper_eager"
{
  cat REPORT_head.md
  ONLY="$MAIN" python tally.py | sed -n '1,13p'
  printf '\nVariants (same libraries, float32 only declared):\n\n'
  ONLY="mea_flash_f32 ring_flash_f32" python tally.py | sed -n '1,4p'
  printf "\nDeclared: the fields that differ from the SDPA contract (the wrappers' @declare). Counts are red checks (failed checks; the baseline has no separate error status). Wall time in seconds on a loaded 2-core machine.\n\n## Red verdicts per implementation (results/baseline)\n\n"
  echo "Each row: the check, the verdict, a root-cause label shared by the rows it explains, the evidence (library file:line, relative to site-packages/<package>/), and the minimal counterexample and message as attncheck printed them."
  python sections.py
  cat REPORT_tail.md
  # results/declared, judged in verdicts_declared.tsv (root causes included)
  cat REPORT_declared.md
  export RES=results/declared VERDICTS=verdicts_declared.tsv
  ONLY="$MAIN" python tally.py | sed -n '1,13p'
  printf '\nVariants (same libraries: float32 only declared, or the features beyond SDPA):\n\n'
  ONLY="mea_flash_f32 ring_flash_f32 xt_attend_softcap xt_attend_sinks" python tally.py | sed -n '1,6p'
  printf "\nDeclared: the fields that differ from the SDPA contract. Red checks: status failed or error; root causes: the first probe's and the run's, judged one by one (TRUE / FALSE). Wall time in seconds on a loaded 2-core machine.\n\n### Red verdicts per implementation (results/declared)\n\n"
  echo "As above; root causes first (with the printed fix), error checks that point at a root cause collapsed into one row."
  python sections.py | sed 's/^### /#### /'
  cat REPORT_reviewed.md
  RES=results/reviewed python tally.py | sed -n '1,18p'
  cat REPORT_integrity.md
  export RES=results/integrity VERDICTS=verdicts_integrity.tsv
  python tally.py | sed -n '1,18p'
  printf '\n### Red verdicts per implementation (results/integrity)\n'
  python sections.py | sed 's/^### /#### /'
  cat REPORT_current.md
  export RES=results/current VERDICTS=verdicts_current.tsv
  python tally.py | sed -n '1,18p'
  printf '\n### Red verdicts per implementation (results/current)\n'
  python sections.py | sed 's/^### /#### /'
} > REPORT.md
