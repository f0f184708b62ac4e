#!/usr/bin/env bash
# Every GPU figure of bench/RESULTS.md ("GPU"), in one call on a lent GPU machine that has torch
# for CUDA but not segtune's other training packages: they travel as wheels in .whl/ (see
# RESULTS.md for the download command). Each step has its own time limit and the most
# important come first, so a short lease still returns the main figures.
#   bash bench/gpu_all.sh OUT_DIR            (on the GPU machine)
#   GPU_ALL_DEVICE=cpu GPU_ALL_SMALL=1 bash bench/gpu_all.sh /tmp/out   (a dry run on CPU)
set -u
out=${1:?usage: gpu_all.sh OUT_DIR}
mkdir -p "$out"
log="$out/gpu_all.log"
dev=${GPU_ALL_DEVICE:-cuda}
export PYTHONUNBUFFERED=1
if [ "$dev" = cuda ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
step() {  # step SECONDS TITLE COMMAND...: run with a time limit, log everything
  local limit=$1 title=$2; shift 2
  # GPU_ALL_STEPS="2 3": only the steps whose titles begin with these
  if [ -n "${GPU_ALL_STEPS:-}" ] && [[ " $GPU_ALL_STEPS " != *" ${title%% *} "* ]]; then return; fi
  echo -e "\n### $title\n\$ $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -E "Warning|warn\(|^ *$" | tee -a "$log"
  echo "[${title}: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s]" | tee -a "$log"
}
if [ -n "${GPU_ALL_SMALL:-}" ]; then  # the CPU dry run: tiny sizes, the same commands
  big=(--channels 4 8 16 --patch 32 32 16 --batch 2)
  share=(--channels 4 8 --patch 32 32 16 --steps 4 --epochs 2 --cases 5)
  steps=(--steps 3 --epochs 2)
  oom=(--channels 4 8 --patch 32 32 16 --batch 2 --steps 3 --epochs 2 --cases 5)
else
  big=(--channels 32 64 128 256 320 --patch 128 128 64 --batch 2)  # spaces/novograd.yaml's GPU example
  share=(--channels 32 64 128 256 320 --patch 128 128 64 --batch 2 --steps 30 --epochs 3 --cpus 4)
  steps=(--steps 25 --epochs 3)
  oom=(--channels 32 64 128 256 320 --patch 128 128 64 --batch 48 --steps 30 --epochs 3 --cpus 4)
fi
L=bench/loop_speed.py
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2
  python3 -c "import torch, monai; print('torch', torch.__version__, 'monai', monai.__version__)"
} 2>&1 | tee -a "$log"
step 90 "1a loop, GPU example, bf16" python3 $L --device "$dev" --precision bf16 "${big[@]}" "${steps[@]}" --repeats 3
step 90 "1b loop, GPU example, fp32" python3 $L --device "$dev" "${big[@]}" "${steps[@]}" --repeats 3
step 200 "2 trials per GPU, GPU example, bf16" python3 bench/gpu_sharing.py --device "$dev" --precision bf16 --trials 1 2 4 --repeats 2 "${share[@]}"
step 75 "3 out of memory: trial 0 over its quarter" python3 bench/gpu_sharing.py --device "$dev" --oom --precision bf16 "${oom[@]}"
step 45 "4a data path: live, 0 sampling threads" python3 $L --device "$dev" --precision bf16 --data live --workers 0 "${big[@]}" "${steps[@]}" --repeats 2
step 45 "4b data path: live, 2 sampling threads" python3 $L --device "$dev" --precision bf16 --data live --workers 2 "${big[@]}" "${steps[@]}" --repeats 2
step 35 "1c loop, phantom size, fp32" python3 $L --device "$dev" "${steps[@]}" --repeats 3
step 35 "1d loop, phantom size, bf16" python3 $L --device "$dev" --precision bf16 "${steps[@]}" --repeats 3
step 110 "1e loop, GPU example, bf16 + compile" python3 $L --device "$dev" --precision bf16 --compile "${big[@]}" "${steps[@]}" --repeats 1
echo done | tee -a "$log"
