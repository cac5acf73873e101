"""Run every comparison in one process and write the report (Markdown table, bar plot, CSV):

    .venv/bin/python -m benchmarks                 # all comparisons, into book/benchmarks.md
    .venv/bin/python -m benchmarks --quick         # short sizes, about a minute on 2 cores
    .venv/bin/python -m benchmarks --only spiking hessian

Each comparison module has ``run(quick=False) -> list[dict]`` returning rows ``{comparison, setting, device,
ours_s, reference_s, ratio, note}``, with ratio = reference time / rnnnotes time.
"""
import argparse
import importlib
import sys
import time
from pathlib import Path

import torch

from . import report

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the comparison modules import their siblings by plain name, as scripts do
from timing import row  # noqa: E402
COMPARISONS = {
    "spiking": ("bench_lsnn", "ALIF and LIF forward+backward vs norse and snntorch; fused vs plain path"),
    "delays": ("bench_delays", "10 synaptic delays vs 1, and BPTT memory, fused vs plain path"),
    "seeds": ("bench_seeds", "S seeds vectorised vs S sequential runs"),
    "hessian": ("bench_hessian", "top Hessian eigenvalue: Lanczos vs PyHessian's power iteration"),
    "lyapunov": ("bench_lyapunov", "Lyapunov spectrum: closed form and batched jvp vs a per-column loop"),
    "plasticity": ("bench_plasticity", "plastic RNN gradient: BPTT vs BOHP's forward mode"),
}


def options(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short sizes and few repeats")
    parser.add_argument("--only", nargs="+", choices=list(COMPARISONS), metavar="NAME",
                        help=f"run only these comparisons: {', '.join(COMPARISONS)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE.parent / "book" / "benchmarks.md",
                        help="Markdown page whose marked section gets the table (default: %(default)s)")
    return parser.parse_args(argv)


def collect(names, quick):
    """Rows of each named comparison, run one after the other in this process."""
    rows = []
    for name in names:
        module, description = COMPARISONS[name]
        if not (HERE / f"{module}.py").exists():
            print(f"{name}: skipped, benchmarks/{module}.py is missing", flush=True)
            rows.append(row(description, "", "", None, None, f"skipped: benchmarks/{module}.py is missing"))
            continue
        start = time.perf_counter()
        print(f"{name}: {description} ...", flush=True)
        found = importlib.import_module(module).run(quick=quick)
        print(f"{name}: {len(found)} rows in {time.perf_counter() - start:.0f} s", flush=True)
        rows += found
    return rows


def main(argv=None):
    args = options(argv)
    torch.set_num_threads(args.threads)
    rows = collect(args.only or list(COMPARISONS), args.quick)
    devices = ["cpu"] + ([f"cuda ({torch.cuda.get_device_name()})"] if torch.cuda.is_available() else [])
    head = report.header(torch_version=torch.__version__, threads=args.threads, devices=devices, root=HERE.parent,
                         quick=args.quick)
    print(head + "\n\n" + report.markdown_table(rows))
    for path in report.write(rows, args.out, head):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
