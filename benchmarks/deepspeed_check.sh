#!/usr/bin/env bash
# DeepSpeed ZeRO-3 check, for a machine with >= 2 GPUs (it cannot run on CPUs: DeepSpeed needs CUDA).
#
#   bash benchmarks/deepspeed_check.sh                 # tiny-hybrid built on the spot, 2 GPUs
#   MODEL=/path/to/Qwen3.5-0.8B NPROC=4 bash benchmarks/deepspeed_check.sh
#
# What it does, through recipes/accelerate/zero3.yaml exactly as a user launches it:
#   1. installs deepspeed if it is missing (pip, into the current Python);
#   2. trains a LoRA recipe for STEPS steps under ZeRO-3 on NPROC GPUs (the reference run);
#   3. trains the same recipe again, stopping at its middle checkpoint (--stop-at), then resumes it;
#   4. compares the per-step losses of the resumed run with the reference (|diff| <= TOL) and loads the
#      exported adapter with plain peft on the base model.
# Exit code 0 when everything matches, 1 on a mismatch or a failed step. Prints a small table.
# Settings (environment): MODEL (default: the builtin tiny-hybrid), NPROC (2), STEPS (8), TOL (1e-3: bf16
# on GPUs is deterministic for this loop in practice, but reductions may be reordered), PYTHON (python).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
MODEL=${MODEL:-tiny-hybrid}
NPROC=${NPROC:-2}
STEPS=${STEPS:-8}
TOL=${TOL:-1e-3}
WORK=$(mktemp -d -t deepspeed-check-XXXX)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt "$NPROC" ]; then
  echo "deepspeed_check: needs $NPROC GPUs, found $gpus" >&2
  exit 1
fi
"$PYTHON" -c "import deepspeed" 2>/dev/null || "$PYTHON" -m pip install --quiet deepspeed

# One recipe, JSON (which is YAML): LoRA r16 on every hybrid projection, bf16, checkpoint at the middle step.
# Dream cycles and monitor audits generate on one process: not available on a sharded model.
recipe() {  # recipe NAME
  "$PYTHON" - "$WORK" "$1" "$MODEL" "$STEPS" <<'PY'
import json, sys
work, name, model, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
recipe = {
    "run": {"name": name, "output_dir": f"{work}/{name}", "seed": 0},
    "model": {"name_or_path": model},
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "hybrid-all"},
    "data": {"max_length": 256, "val_fraction": 0.05, "sources": [
        {"name": "tier1", "path": "recipes/data/directive-tier1.jsonl", "strip_instructions": True}]},
    "train": {"max_steps": steps, "batch_size": 4, "grad_accum": 2, "lr": 2e-4, "precision": "bf16",
              "checkpoint_every": steps // 2, "eval_every": steps, "warmup_steps": 2},
    "monitor": {"audit_every": 0},
    "dream": {"enabled": False},
    "logging": {"progress": False},
}
path = f"{work}/{name}.yaml"
open(path, "w").write(json.dumps(recipe))
print(path)
PY
}

launch() {  # launch ARGS...
  "$PYTHON" -m accelerate.commands.launch --config_file recipes/accelerate/zero3.yaml \
    --num_processes "$NPROC" -m toolkit "$@"
}

echo "== reference: $STEPS steps, ZeRO-3, $NPROC GPUs, model $MODEL (work dir $WORK)"
launch finetune "$(recipe reference)"
echo "== stopped at step $((STEPS / 2)), then resumed"
resumed=$(recipe resumed)
launch finetune "$resumed" --stop-at $((STEPS / 2))
launch finetune "$resumed" --resume

"$PYTHON" - "$WORK" "$STEPS" "$TOL" <<'PY'
import json, sys
from pathlib import Path

work, steps, tol = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def losses(run):
    rows = [json.loads(line) for line in open(work / run / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}

ref, res = losses("reference"), losses("resumed")
print(f"{'step':>4}  {'reference':>10}  {'resumed':>10}  {'|diff|':>9}")
bad = sorted(ref) != list(range(1, steps + 1)) or sorted(res) != sorted(ref)
for step in sorted(ref):
    diff = abs(ref[step] - res.get(step, float("nan")))
    bad |= not diff <= tol
    print(f"{step:>4}  {ref[step]:>10.5f}  {res.get(step, float('nan')):>10.5f}  {diff:>9.2e}")

state = json.loads((work / "resumed" / "checkpoints" / f"step-{steps}" / "state.json").read_text())
print("checkpoint engine:", state.get("engine"))
bad |= state.get("engine") != "deepspeed"

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

base_dir = json.loads((work / "resumed" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
tuned = PeftModel.from_pretrained(base, str(work / "resumed" / "adapter"))
ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
with torch.no_grad():
    logits = tuned(ids).logits
print("exported adapter loads in peft:", tuple(logits.shape), "finite:", bool(torch.isfinite(logits).all()))
bad |= not bool(torch.isfinite(logits).all())
print("DEEPSPEED CHECK", "FAILED" if bad else "PASSED")
sys.exit(1 if bad else 0)
PY
