#!/usr/bin/env bash
# Fuser GPU check (issue 3), one H200, under 8 minutes:
#  1. CUDA-graph runner vs eager fuser on fresh random inputs at every bucket (a full-bucket length
#     and a padded shorter one): relative error <= 1e-3 in bfloat16, <= 1e-5 in float32;
#  2. per-layer fusion time (eager and graphs) vs the receiver's own prefill at N = 128, 512, 2048
#     for a Qwen3-0.6B-shaped receiver and a Qwen2.5-0.5B-shaped sharer (random weights).
# Writes fuser_bf16.json and fuser_fp32.json into $OUT (or bench/out); exits non-zero when any
# bucket's graph output disagrees with eager.
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/out}"
mkdir -p "$out_dir"

python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

time python -m c2c.cli bench fuser --json --dtype bfloat16 --lengths 128,512,2048 \
  --check-graphs --repeats 20 > "$out_dir/fuser_bf16.json"
time python -m c2c.cli bench fuser --json --dtype float32 --lengths 128,512,2048 \
  --check-graphs --repeats 10 > "$out_dir/fuser_fp32.json"

python - "$out_dir" <<'PY'
import json
import sys
from pathlib import Path

ok = True
for name in ("fuser_bf16.json", "fuser_fp32.json"):
    report = json.loads((Path(sys.argv[1]) / name).read_text())
    print(f"== {name}: {report['device']} {report['dtype']}, {report['fused_layers']} fused layers, "
          f"graph capture {report['graph_capture_s']:.1f} s")
    print(f"{'N':>6} {'prefill ms':>11} {'eager ms':>9} {'graphs ms':>10} {'fuse/prefill':>13} "
          f"{'graph x':>8}")
    for n, row in report["lengths"].items():
        print(f"{n:>6} {row['receiver_prefill_ms']:>11.3f} {row['fusion_eager_all_layers_ms']:>9.3f} "
              f"{row['fusion_graphs_all_layers_ms']:>10.3f} "
              f"{row['fusion_all_layers_over_prefill']:>13.3f} "
              f"{row['graph_speedup_over_eager']:>8.2f}")
    for target, cell in report["targets"].items():
        print(f"target {target}: {cell['measured']:.3f} {'pass' if cell['pass'] else 'MISS'}")
    check = report["graph_check"]
    for bucket, cell in check["buckets"].items():
        print(f"bucket {bucket:>5} lengths {cell['lengths']}: max rel err {cell['max_rel_err']:.2e} "
              f"(<= {check['tolerance']:.0e}) {'pass' if cell['pass'] else 'FAIL'}")
    ok = ok and check["pass"]
print("GRAPH CHECK:", "pass" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
