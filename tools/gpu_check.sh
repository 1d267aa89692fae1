#!/usr/bin/env bash
# The GPU figures of issue 9 and docs/benchmarks.md in two short parts, for a session that is
# lent a GPU machine for a few minutes (docs/benchmarks.md, "GPU": how to run it).
#
#   tools/gpu_check.sh 1   # ~6-8 min on an H100: train-step benchmarks of resnet50 and
#                          # vovnet39 (bf16, 800 px, batch 2) with cudnn.benchmark and fused
#                          # SGD against the bare step, then kWh per epoch from real runs
#   tools/gpu_check.sh 2   # ~5-7 min: channels_last, a compiled backbone, the loader on the
#                          # study's 2,700 px scans, and the NVML energy-counter check
#
# Results go to $OUT (the device tool's folder that comes back) or ./gpu-check: one
# NAME.json per measurement (the benchmark's last line) and NAME.log with all its output.
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

# step NAME SECONDS COMMAND...: run it, keep its output, and its last line as NAME.json
step() {
    local name=$1 seconds=$2
    shift 2
    echo "== $name: $*"
    local started=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    local status=$?
    tail -n 1 "$out/$name.log" >"$out/$name.json"
    echo "   exit $status after $((SECONDS - started)) s; $(tail -c 300 "$out/$name.json")"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm \
    --format=csv >"$out/gpu.csv" 2>&1
cat "$out/gpu.csv"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

train_bench="python3 -m maskdla.bench train --batch-size 2 --size 800x1333 --amp bf16 --device cuda --workers 4 --json"
case $part in
1)
    step resnet50-cudnn 150 $train_bench --backbone resnet50 --steps 40 --warmup 10 --repeats 2 --variant cudnn-benchmark
    step vovnet39-fused 150 $train_bench --backbone vovnet39 --steps 40 --warmup 10 --repeats 2 --variant fused-sgd
    # kWh per epoch: 128 synthetic training pages at 800 px, 3 epochs, energy meter on
    epochs=3
    for backbone in resnet50 vovnet39; do
        step "train-$backbone" 120 python3 -m maskdla.train --backbone $backbone --epochs $epochs \
            --batch-size 2 --amp bf16 --workers 4 --synthetic-pages 160 --synthetic-train 128 \
            --synthetic-width 1200 --out "/tmp/runs/$backbone"
        python3 - "$backbone" "$epochs" "/tmp/runs/$backbone/summary.json" \
            >"$out/energy-$backbone.json" <<'PY'
import json, sys
backbone, epochs, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
summary = json.load(open(path))
energy = summary.get("energy") or {}
kwh = energy.get("energy_kwh")
print(json.dumps({"backbone": backbone, "epochs": epochs,
                  "images_per_s": summary.get("images_per_s"),
                  "training_time_s": summary.get("training_time_s"), "energy_kwh": kwh,
                  "kwh_per_epoch": None if kwh is None else kwh / epochs, "energy": energy}))
PY
        cat "$out/energy-$backbone.json"
    done
    ;;
2)
    step resnet50-channels-last 150 $train_bench --backbone resnet50 --steps 40 --warmup 10 --repeats 2 --variant channels-last
    step resnet50-compile 240 $train_bench --backbone resnet50 --steps 40 --warmup 20 --repeats 1 --variant compile-backbone
    step resnet50-scans 150 $train_bench --backbone resnet50 --steps 30 --warmup 10 --repeats 1 --page-width 2700
    step energy-counter 100 python3 -m maskdla.bench energy --gpu-check --duration 60 --json
    ;;
*)
    echo "usage: tools/gpu_check.sh 1|2" >&2
    exit 2
    ;;
esac
