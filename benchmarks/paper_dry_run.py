"""Each notebook at the sizes of its `paper` profile, for a few steps: a check, before hours on a GPU, that nothing
breaks at those sizes or on that device (a tensor left on the CPU, a shape, a data set smaller than asked for).

    python benchmarks/paper_dry_run.py [NAME ...] [--device cuda]

Runs outside Jupyter (the GPU machine has neither papermill nor a kernel): each notebook's code cells are executed
in one namespace, after its `parameters` cell, with the `paper` values and the counts in ``SHRINK`` (iterations,
seeds, evaluation intervals) put in their place. A few steps cannot meet the notebooks' claims, so their
``assert`` statements are compiled out (``optimize=1``); the module's own checks stay. Results go to a temporary
directory. Prints one line per notebook, ``ok`` with its seconds or the failing cell with the error, and exits 1
if any failed.
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from rnnnotes.profiles import PROFILES  # noqa: E402

SHRINK = {  # counts of steps, seeds and evaluations; every size (networks, batches, sequences, data) stays `paper`
    "01_neurons": {},
    "02_store_recall": {"n_iterations": 4, "stop_every": 2, "stop_window": 2},
    "03_smnist": {"n_seeds": 1, "n_iterations": 2, "sweep_seeds": 1, "sweep_iterations": 2, "eval_every": 1},
    "04_credit_assignment": {"n_seeds": 2, "n_iterations": 3, "eval_every": 1, "mus": [0.25, 1.0], "n_mu_seeds": 2,
                             "n_align_seeds": 2, "align_path_seeds": 2, "align_steps": 3, "align_every": 1},
    "05_curvature": {"n_seeds": 2, "n_iterations": 4, "eval_every": 2, "lsnn_iterations": 2},
    "06_gradient_flossing": {"n_seeds": 2, "n_iterations": 3, "eval_every": 1, "pre_steps": 3, "inter_steps": 2,
                             "inter_every": 1, "demo_floss_steps": 5, "alif_seeds": 2, "alif_floss_steps": 2,
                             "alif_iterations": 3},
    "07_hebbian_plasticity": {"n_iterations": 5, "eval_every": 2, "dp_iterations": 3, "dp_eval_every": 1},
}


def code_cells(name):
    """The source of each code cell of ``notebooks/NAME.ipynb`` and whether it is the ``parameters`` cell."""
    cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
    return [("".join(c["source"]), "parameters" in c.get("metadata", {}).get("tags", []))
            for c in cells if c["cell_type"] == "code"]


def dry_run(name, device):
    """Execute notebook ``name`` at its shrunk `paper` settings; ``None`` on success, else the failure."""
    values = {**PROFILES[name]["paper"], **SHRINK[name], "profile": "paper", "device": device}
    namespace = {"__name__": "__main__", "display": lambda *objects, **options: None}
    for i, (source, is_parameters) in enumerate(code_cells(name)):
        try:
            exec(compile(source, f"{name} cell {i}", "exec", optimize=1), namespace)
            if is_parameters:
                unknown = set(values) - set(namespace)
                if unknown:
                    raise KeyError(f"not declared in the parameters cell: {sorted(unknown)}")
                namespace.update(values)
        except Exception:  # report the cell and carry on with the next notebook
            first_line = source.strip().splitlines()[0] if source.strip() else ""
            return f"cell {i} ({first_line[:60]!r}):\n{traceback.format_exc(limit=-4)}"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=sorted(SHRINK), help="notebooks (default: all)")
    parser.add_argument("--device", default="auto", help="the notebooks' device parameter (default: auto)")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(SHRINK))
    if unknown:
        parser.error(f"unknown notebooks {unknown}; valid: {', '.join(sorted(SHRINK))}")
    os.environ.setdefault("MPLBACKEND", "Agg")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="rnnnotes-dry-") as results:
        os.environ["RNNNOTES_RESULTS"] = results
        os.chdir(ROOT / "notebooks")  # where the runner starts the notebooks' kernels
        for name in args.names:
            start = time.perf_counter()
            error = dry_run(name, args.device)
            seconds = time.perf_counter() - start
            failed += error is not None
            if "matplotlib.pyplot" in sys.modules:
                sys.modules["matplotlib.pyplot"].close("all")
            print(f"{name}: {'ok' if error is None else 'FAILED in ' + error} ({seconds:.0f} s)", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
