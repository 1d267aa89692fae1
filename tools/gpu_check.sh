#!/usr/bin/env bash
# The GPU figures of issue 9 and docs/benchmarks.md in two short parts, for a session that is
# lent a GPU machine for a few minutes (docs/benchmarks.md, "GPU": how to run it).
#
#   tools/gpu_check.sh 1   # ~5 min on an H100 (limits add up to 600 s): train-step
#                          # benchmarks of resnet50 and vovnet39 (bf16, 800 px, batch 2) with
#                          # cudnn.benchmark and fused SGD against the bare step, then kWh
#                          # per epoch from real runs (resnet50 with both --loader-pass)
#   tools/gpu_check.sh 2   # ~5 min (limits: 530 s): channels_last, a compiled backbone, the
#                          # loader on the study's 2,700 px scans, the NVML energy counter
#
# Results go to $OUT (the device tool's folder that comes back, at most 8 files) or
# ./gpu-check: partN.jsonl, one line per step ({"step", "exit", "seconds", "result": the
# step's last output line as JSON, or null}), and partN.log with every step's output.
# Each step has its own time limit, so one that hangs costs its limit, not the whole part.
# The machine needs torch and torchvision; pycocotools, shapely and simplejpeg can come as
# wheels in .whl/ (tools/fetch_gpu_wheels.sh), installed here into /tmp/site.
set -u
part=${1:?usage: tools/gpu_check.sh 1|2}
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export MASKDLA_CACHE=/tmp/maskdla-cache

log="$out/part$part.log" results="$out/part$part.jsonl"

# record NAME EXIT SECONDS FILE: one line of partN.jsonl from FILE's last line
record() {
    python3 - "$@" >>"$results" <<'PY'
import json, sys
name, status, seconds, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = open(path, errors="replace").read().splitlines()
try:
    result = json.loads(lines[-1])
except (IndexError, ValueError):
    result = None
print(json.dumps({"step": name, "exit": status, "seconds": seconds, "result": result}))
PY
}

# step NAME SECONDS COMMAND...: run it with a time limit; output to partN.log
step() {
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*" | tee -a "$log"
    local started=$SECONDS
    timeout "$seconds" "$@" >"/tmp/gpu-check-$name.log" 2>&1
    local status=$?
    cat "/tmp/gpu-check-$name.log" >>"$log"
    record "$name" "$status" "$((SECONDS - started))" "/tmp/gpu-check-$name.log"
    echo "   exit $status after $((SECONDS - started)) s; $(tail -c 300 "/tmp/gpu-check-$name.log")"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee -a "$log"

train_bench="python3 -m maskdla.bench train --batch-size 2 --size 800x1333 --amp bf16 --device cuda --workers 4 --json"
case $part in
1)
    step resnet50-cudnn 150 $train_bench --backbone resnet50 --steps 40 --warmup 10 --repeats 2 --variant cudnn-benchmark
    step vovnet39-fused 150 $train_bench --backbone vovnet39 --steps 40 --warmup 10 --repeats 2 --variant fused-sgd
    # kWh per epoch: 128 synthetic training pages at 800 px, 3 epochs, energy meter on;
    # resnet50 also with --loader-pass run (prefetching through epoch ends)
    epochs=3
    for run in resnet50:epoch resnet50:run vovnet39:epoch; do
        backbone=${run%:*} pass=${run#*:}
        step "train-$backbone-$pass" 100 python3 -m maskdla.train --backbone $backbone \
            --epochs $epochs --batch-size 2 --amp bf16 --workers 4 --loader-pass $pass \
            --synthetic-pages 160 --synthetic-train 128 --synthetic-width 1200 \
            --out "/tmp/runs/$backbone-$pass"
        python3 - "$backbone" "$epochs" "/tmp/runs/$backbone-$pass" \
            >"/tmp/gpu-check-energy-$backbone-$pass.json" <<'PY'
import json, statistics, sys
backbone, epochs, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
path = run + "/summary.json"
summary = json.load(open(path))
energy = summary.get("energy") or {}
kwh = energy.get("energy_kwh")
log = [json.loads(line) for line in open(run + "/log.jsonl")]
print(json.dumps({"backbone": backbone, "epochs": epochs,
                  "images_per_s": summary.get("images_per_s"),
                  "mean_data_wait_percent": statistics.mean(r["data_wait_percent"] for r in log),
                  "training_time_s": summary.get("training_time_s"), "energy_kwh": kwh,
                  "kwh_per_epoch": None if kwh is None else kwh / epochs, "energy": energy}))
PY
        record "energy-$backbone-$pass" $? 0 "/tmp/gpu-check-energy-$backbone-$pass.json"
        cat "/tmp/gpu-check-energy-$backbone-$pass.json"
    done
    ;;
2)
    step resnet50-channels-last 120 $train_bench --backbone resnet50 --steps 40 --warmup 10 --repeats 2 --variant channels-last
    step resnet50-compile 200 $train_bench --backbone resnet50 --steps 40 --warmup 20 --repeats 1 --variant compile-backbone
    step resnet50-scans 120 $train_bench --backbone resnet50 --steps 30 --warmup 10 --repeats 1 --page-width 2700
    step energy-counter 90 python3 -m maskdla.bench energy --gpu-check --duration 60 --json
    ;;
*)
    echo "usage: tools/gpu_check.sh 1|2" >&2
    exit 2
    ;;
esac
