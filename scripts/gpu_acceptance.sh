#!/usr/bin/env bash
# The first check on a lent GPU (one H100/H200, at most 8 minutes), prepared in advance.
#
#   scripts/gpu_acceptance.sh --prepare SUPERGLUE_DIR      # here, before: copy what it needs
#   scripts/gpu_acceptance.sh [--dry-run] [--data DIR] [--model DIR] [OUT]
#
# Steps, each with its own log and time limit, all results in one folder (OUT, or $OUT, or
# results/gpu_acceptance), and a one-screen summary at the end (OUT/summary.txt):
#   1. optim:      LOMO and AdaLomo in fp16 with dynamic loss scaling against fp32 references,
#                  on CUDA (pytest tests/test_optim_device.py)
#   2. finetune:   a ZeRO-3 `lomo finetune` smoke run over NCCL (1 rank; 2 with 2 GPUs) on
#                  SmolLM2-135M and the local RTE data, in bf16
#      finetune_fp16: the same in fp16, the paper's dtype, with dynamic loss scaling: step 2's
#                  gradients are made inf (--force-overflow-step 2), the step is skipped, the
#                  scale halves and regrows after 2 clean steps (--loss-scale-window 2)
#   3. memory:     `lomo memory` at the LLaMA-7B shape (seq 512, batch 8, fp16, eager), layers
#                  1 and 2 extrapolated to 32: census and allocator peak, beside Table 1
#   4. plan:       `lomo plan` for the same runs, beside steps 3 and 5
#   5. throughput: `lomo throughput` LOMO vs lomo-optim, full LLaMA-7B shape, seq 1024,
#                  batch 1, fp16, AC, clipping, beside Table 2
# Nothing needs the internet. Without a GPU (or with --dry-run) the same steps run on CPU at
# tiny sizes (tiny-llama, a few tokens; fp16 allowed on CPU by --allow-cpu-fp16):
# tests/test_gpu_acceptance.py runs that in the default suite.
#
# The device machine sees only the repository. `--prepare SUPERGLUE_DIR` copies into the
# git-ignored .cache/acceptance/: the first 64 rows of RTE's train and val splits, and
# SmolLM2-135M (from `lomo models`' cache). Where uploads are capped (the device tool here
# carries 64 MiB; the weights are 517 MB) prepare with LOMO_ACCEPTANCE_NO_WEIGHTS=1: only
# SmolLM2's config and tokenizer travel, and step 2 runs SmolLM2-135M's architecture with
# random weights (it checks the ZeRO-3/NCCL path, not accuracy). Then, e.g.:
#   run(command="bash scripts/gpu_acceptance.sh", carry=[".cache/acceptance"])
# Python packages missing there (deepspeed, lomo-optim) travel as wheels (.whl, see the
# device notes). The interpreter: $PYTHON, else the repository's .venv (scripts/setup.sh),
# else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    if [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
STAGE=${ACCEPTANCE_STAGE:-.cache/acceptance}  # git-ignored

if [[ ${1:-} == --prepare ]]; then
    src=${2:?usage: $0 --prepare SUPERGLUE_DIR}
    mkdir -p "$STAGE/superglue/RTE"
    for split in train val; do
        head -n 64 "$src/RTE/$split.jsonl" >"$STAGE/superglue/RTE/$split.jsonl"
    done
    "$PYTHON" - "$STAGE/smollm2-135m" <<'EOF'
import os, shutil, sys
from pathlib import Path
from lomo.train.models import SMOLLM2, resolve
source, target = Path(resolve(SMOLLM2)), Path(sys.argv[1])
target.mkdir(parents=True, exist_ok=True)
for path in source.iterdir():
    if os.environ.get("LOMO_ACCEPTANCE_NO_WEIGHTS") and path.suffix == ".safetensors":
        continue
    shutil.copy2(path, target / path.name)
EOF
    du -sh "$STAGE"
    exit 0
fi

DRY=0
DATA=$STAGE/superglue
MODEL=$STAGE/smollm2-135m
OUT_DIR=${OUT:-results/gpu_acceptance}
while (($#)); do
    case $1 in
        --dry-run) DRY=1 ;;
        --data) DATA=$2; shift ;;
        --model) MODEL=$2; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "gpu_acceptance.sh: unknown option $1" >&2; exit 2 ;;
        *) OUT_DIR=$1 ;;
    esac
    shift
done
if [[ ! -f $DATA/RTE/val.jsonl ]]; then
    echo "gpu_acceptance.sh: no $DATA/RTE/val.jsonl: run '$0 --prepare SUPERGLUE_DIR' or pass --data" >&2
    exit 2
fi
GPUS=0
if ((!DRY)); then GPUS=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())'); fi
if ((GPUS == 0)); then DRY=1; fi
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/steps.tsv"

# step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record the outcome.
# The limits add up to 8 minutes on a GPU; a CPU dry run gets three times as long.
step() {
    local name=$1 limit=$(($2 * (DRY ? 3 : 1))) start status=0
    shift 2
    start=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee "$OUT_DIR/$name.log"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT_DIR/$name.log" 2>&1 || status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - start))" >>"$OUT_DIR/steps.tsv"
}

LOMO=("$PYTHON" -m lomo.cli)
if ((DRY)); then
    # The same steps at tiny sizes on CPU: seconds, not minutes.
    DEVICE=cpu NPROC=1 FT_MODEL=tiny-llama FT_DTYPE=fp32
    FT_SIZES=(--train-size 12 --test-size 4 --max-length 64)  # 3 steps: the fp16 run recovers
    "$PYTHON" -c "from lomo.train.models import load_model; load_model('tiny-llama').config.to_json_file('$OUT_DIR/tiny-llama.json')"
    MEMORY_ARGS=(--model tiny-llama --dtype fp32 --optimizers lomo --seq 32 --batch 2 --ac on)
    PLAN_MEMORY=("$OUT_DIR/tiny-llama.json" --seq 32 --batch 2 --dtype fp32)
    THROUGHPUT_ARGS=(--model tiny-llama --dtype fp32 --seq 32 --batch 2 --warmup 1 --steps 1)
    PLAN_THROUGHPUT=("$OUT_DIR/tiny-llama.json" --seq 32 --batch 2 --dtype fp32)
    OPTIM_FILTER=(-k lomo_fp16)
    FP16_ARGS=(--allow-cpu-fp16)  # fp16 on CPU: the rehearsal opt-in
else
    DEVICE=cuda NPROC=$((GPUS >= 2 ? 2 : 1)) FT_DTYPE=bf16 FT_MODEL=$MODEL
    FT_SIZES=(--train-size 16 --test-size 8 --max-length 128)
    if ! compgen -G "$MODEL/*.safetensors" >/dev/null; then
        # Only config and tokenizer travelled: SmolLM2-135M's architecture, random weights.
        FT_MODEL=$OUT_DIR/smollm2-135m-random
        "$PYTHON" - "$MODEL" "$FT_MODEL" <<'EOF'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModelForCausalLM
source, target = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(target)
for path in source.glob("*token*"):
    shutil.copy2(path, target / path.name)
EOF
    fi
    MEMORY_ARGS=(--model llama-7b --layers 1 2 --dtype fp16 --attn eager --optimizers lomo sgd adamw --seq 512 --batch 8 --ac off on)
    PLAN_MEMORY=(7b --seq 512 --batch 8 --dtype fp16 --attn eager --no-deepspeed)
    THROUGHPUT_ARGS=(--model llama-7b --dtype fp16 --seq 1024 --batch 1 --warmup 2 --steps 5)
    PLAN_THROUGHPUT=(7b --seq 1024 --batch 1 --dtype fp16 --attn sdpa --no-deepspeed)
    OPTIM_FILTER=()
    FP16_ARGS=()
fi
echo "gpu_acceptance: $( ((DRY)) && echo 'DRY RUN on CPU, tiny sizes' || echo "$GPUS GPU(s)") -> $OUT_DIR"

step optim 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_optim_device.py "${OPTIM_FILTER[@]}" \
    --junitxml "$OUT_DIR/optim.xml"
FINETUNE=(-m lomo.cli finetune --model "$FT_MODEL" --method lomo --task rte --data-dir "$DATA"
    --protocol val-split "${FT_SIZES[@]}" --epochs 1 --global-batch 4 --micro-batch 4
    --eval-batch 8 --lr 1e-3 --deepspeed config/deepspeed/zero3.json)
step finetune 120 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    "${FINETUNE[@]}" --dtype "$FT_DTYPE" --out "$OUT_DIR/finetune"
step finetune_fp16 120 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" \
    "${FINETUNE[@]}" --dtype fp16 --loss-scale-window 2 --force-overflow-step 2 "${FP16_ARGS[@]}" \
    --out "$OUT_DIR/finetune_fp16"
step memory 140 "${LOMO[@]}" memory "${MEMORY_ARGS[@]}" --device "$DEVICE" \
    --raw "$OUT_DIR/memory_raw.json" --csv "$OUT_DIR/memory.csv"
PLAN=("$PYTHON" -m lomo.measure.plan)  # `lomo plan` without the whole CLI's imports
step plan 30 bash -c 'for ac in --no-activation-checkpointing --activation-checkpointing; do
        "$@" $ac --memory 80 --json; done' _ "${PLAN[@]}" "${PLAN_MEMORY[@]}"
step plan_throughput 20 "${PLAN[@]}" "${PLAN_THROUGHPUT[@]}" --memory 80 --json
step throughput 100 "${LOMO[@]}" throughput "${THROUGHPUT_ARGS[@]}" --optimizers lomo lomo-optim \
    --ac on --clip --device "$DEVICE" --csv "$OUT_DIR/throughput.csv"

"$PYTHON" - "$OUT_DIR" "$DRY" <<'EOF' | tee "$OUT_DIR/summary.txt"
import csv, json, sys
from pathlib import Path
from lomo.loss_scaler import DynamicLossScaler

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
print(f"gpu_acceptance summary ({'DRY RUN: CPU, tiny sizes, numbers not comparable' if dry else 'GPU'})")
steps = list(csv.reader(open(out / "steps.tsv"), delimiter="\t"))
print(f"  {len(steps)} steps in {sum(int(s[2]) for s in steps)} s")
for name, status, seconds in steps:
    verdict = "PASS" if status == "0" else ("TIMEOUT" if status in ("124", "137") else f"FAIL ({status})")
    print(f"  {name:16} {verdict:12} {seconds:>5} s   {out / (name + '.log')}")
metrics = out / "finetune" / "metrics.json"
if metrics.exists():
    print(f"finetune: reported {json.loads(metrics.read_text())['reported']}")
log = out / "finetune_fp16" / "train_log.csv"
if log.exists():  # each overflow: skipped, the scale halved; recovered: later steps updated
    rows = list(csv.DictReader(open(log)))
    scales = [DynamicLossScaler.init_scale] + [float(r["loss_scale"]) for r in rows]
    done = (out / "finetune_fp16" / "metrics.json").exists()
    for i, r in enumerate(rows):
        if r["overflow"] == "1":
            later = [s for s in rows[i + 1:] if s["overflow"] == "0"]
            print(f"finetune_fp16: overflow at step {r['step']} skipped, scale {scales[i]:g} -> "
                  f"{scales[i + 1]:g}, " + (f"recovered: {len(later)} later steps updated, scale "
                  f"{scales[-1]:g} at step {rows[-1]['step']}" if later and done else "NOT recovered"))

def plans(log):
    return [json.loads(line) for line in open(log) if line.startswith("{")] if log.exists() else []

memory_plans = plans(out / "plan.log")  # AC off, then on
if (out / "memory.csv").exists():
    print("memory (GB, GiB as in the paper): census peak / allocator peak / paper total / plan peak")
    for row in csv.DictReader(open(out / "memory.csv")):
        planned = row["optimizer"] == "lomo" and len(memory_plans) == 2
        plan = memory_plans[row["ac"] == "yes"]["peak_gib"] if planned else None
        print(f"  {row['optimizer']:6} AC {row['ac']:3} {float(row['census_peak_gb']):8.2f} "
              f"{float(row['process_peak_gb']):8.2f} {row['paper_total_gb'] or '-':>8} "
              f"{plan if plan is None else round(plan, 2)!s:>8}")
if (out / "throughput.csv").exists():
    rows = {r["optimizer"]: r for r in csv.DictReader(open(out / "throughput.csv"))}
    (plan,) = plans(out / "plan_throughput.log") or [None]
    print("throughput: TGS (tokens/GPU/s) / allocator peak GiB / paper TGS / paper GB")
    for name, r in rows.items():
        print(f"  {name:10} {float(r['tgs_median']):10.1f} {float(r['peak_gb']):8.2f} "
              f"{r['paper_tgs'] or '-':>8} {r['paper_memory_gb'] or '-':>6}")
    if {"lomo", "lomo-optim"} <= rows.keys():
        ratio = float(rows["lomo"]["tgs_median"]) / float(rows["lomo-optim"]["tgs_median"])
        print(f"  LOMO / lomo-optim TGS {ratio:.3f}"
              + (f"; lomo plan peak {plan['peak_gib']:.2f} GiB" if plan else ""))
print(f"all results: {out}")
EOF
! grep -qv $'\t0\t' "$OUT_DIR/steps.tsv"
