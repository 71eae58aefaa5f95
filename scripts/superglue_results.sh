#!/usr/bin/env bash
# Reruns RESULTS.md's whole SuperGLUE-on-decoders section (issue 19) with one command: the
# zero-shot rows (scripts/superglue_lm.sh), the fine-tuned rows (scripts/superglue_train.sh),
# the investigations (scripts/superglue_investigate.sh), then prints both tables
# (scripts/superglue_table.py). Each step skips finished runs and resumes an interrupted one
# from its checkpoint, so running this again continues where it stopped. On 2 cores the whole
# section is many hours: each script's header says how to run one row or one lane.
#
#   scripts/superglue_results.sh                    # SmolLM2-135M (Q4_1 GGUF), ../shared/data
#   BIN=/tmp/ttlora DATA=/path/to/root scripts/superglue_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export BIN
scripts/superglue_lm.sh
scripts/superglue_train.sh
scripts/superglue_investigate.sh
python3 scripts/superglue_table.py
echo
python3 scripts/superglue_table.py --investigate
