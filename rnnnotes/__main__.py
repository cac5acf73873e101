"""Command line: ``python -m rnnnotes {list, run, book, sweep, paper, results}``; see ``--help``.

Notebooks are read from $RNNNOTES_NOTEBOOKS (default ./notebooks), results go to $RNNNOTES_RESULTS (default
./results) and the book's sources are $RNNNOTES_BOOK (default ./book).
"""
import argparse
import reprlib
import signal
import sys

from . import archive, profiles, runner, store, sweep


def _pairs(items, split_values=False):
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise profiles.ParameterError(f"expected key=value, got {reprlib.repr(item)}")
        pairs[key] = value.split(",") if split_values else value
    return pairs


def _list(_args):
    for name in profiles.notebook_names():
        print(name)
        for key, default in profiles.declared_parameters(name).items():
            if key == "profile":
                continue
            by_profile = "  ".join(f"{p}={profiles.PROFILES.get(name, {}).get(p, {}).get(key, default)!r}"
                                   for p in profiles.PROFILE_NAMES[1:])
            print(f"  {key} = {default!r}  ({by_profile})")
    print("profiles: " + ", ".join(profiles.PROFILE_NAMES))


def _terminated(signum, _frame):
    """SIGTERM as an exit that unwinds (the default action does not): papermill writes the executed copy and the
    kernel's socket directory is removed. A sweep that ends sends it to its executions (``runner._die_with_parent``)."""
    raise SystemExit(128 + signum)


def _run(args):
    signal.signal(signal.SIGTERM, _terminated)
    print(runner.run(args.name, args.profile, _pairs(args.param), output=args.output, cell_timeout=args.cell_timeout))


def _book(args):
    print(f"book: {runner.build_book(args.profile, book_dir=args.book_dir, stored=args.stored, jobs=args.jobs)}")


def _executor_factory(args):
    def make():
        return sweep.executor(args.executor, jobs=args.jobs, partition=args.partition, minutes=args.time,
                              gpus=args.gpus, mem_gb=args.mem)
    make()  # bad options fail here, before anything starts
    return make


def _report(outcomes):
    print(sweep.summary(outcomes))
    if any(status == "failed" for _, status, _ in outcomes):
        sys.exit(1)


def _sweep(args):
    axes = _pairs(args.grid, split_values=True)
    if args.seeds:
        axes["seed"] = sweep.seed_list(args.seeds)
    _report(sweep.sweep(args.name, args.profile, axes, executor=_executor_factory(args)()))


def _paper(args):
    names = args.names or profiles.notebook_names()
    for name in names:
        profiles.resolve(name, "paper")
    make_executor = _executor_factory(args)
    hours = {name: profiles.PAPER_HOURS.get(name, float("nan")) for name in names}
    print("paper profile, rough time on one GPU or, where it was measured there, on 2 CPU cores "
          "(rnnnotes/profiles.py, PAPER_HOURS): "
          + ", ".join(f"{name} {h:g} h" for name, h in hours.items()) + f"; about {sum(hours.values()):g} h in all")
    _report(sweep.paper(names, make_executor=make_executor))


def _results(args):
    if args.action == "pack":
        print(f"packed {archive.pack(args.archive)} files of {store.results_root()} into {args.archive}")
        return
    manifest = archive.unpack(args.archive)
    same = manifest["source"] == store.source_hash()
    print(f"unpacked {manifest['files']} files into {store.results_root()}; their source hash "
          f"{manifest['source']} {'matches' if same else 'differs from'} this package's {store.source_hash()}"
          + ("" if same else ": runs keyed by the other source will not be reused"))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rnnnotes", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="notebooks, profiles and parameters").set_defaults(func=_list)
    for cmd, func, helptext in (("run", _run, "execute one notebook"), ("sweep", _sweep, "a grid of runs")):
        p = commands.add_parser(cmd, help=helptext)
        p.add_argument("name")
        p.add_argument("--profile", default="smoke", help="smoke, book or paper (default smoke)")
        p.set_defaults(func=func)
    commands.choices["run"].add_argument("-p", "--param", action="append", help="key=value, repeatable")
    commands.choices["run"].add_argument("--output", help="where the executed notebook goes")
    commands.choices["run"].add_argument("--cell-timeout", type=float,
                                         help="seconds a cell may run (default: no limit)")
    commands.choices["sweep"].add_argument("-g", "--grid", action="append", help="key=v1,v2,..., repeatable")
    commands.choices["sweep"].add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    paper = commands.add_parser("paper", help="every notebook at `paper`, seeds as sweep points")
    paper.add_argument("names", nargs="*", help="notebooks (default: all)")
    paper.set_defaults(func=_paper)
    for options in (commands.choices["sweep"], paper):
        options.add_argument("--executor", default="local", help="local (default) or slurm (submitit)")
        options.add_argument("--jobs", type=int, default=2, help="points running at once (default 2)")
        options.add_argument("--partition", help="SLURM partition")
        options.add_argument("--time", type=int, help="SLURM time limit per point, minutes")
        options.add_argument("--gpus", type=int, help="GPUs per point (SLURM)")
        options.add_argument("--mem", type=int, help="memory per point, GB (SLURM)")
    book = commands.add_parser("book", help="execute all notebooks and build the HTML book")
    book.add_argument("--profile", default="book")
    book.add_argument("--book-dir", help="build in a copy of the book's sources here (default: in place)")
    book.add_argument("--stored", action="store_true",
                      help="draw every run from the results store, train nothing; list the runs missing")
    book.add_argument("--jobs", type=int, default=1, help="notebooks executing at once (default 1)")
    book.set_defaults(func=_book)
    results = commands.add_parser("results", help="pack the results directory into an archive, or unpack one")
    results.add_argument("action", choices=("pack", "unpack"))
    results.add_argument("archive", help="a .tar.gz file")
    results.set_defaults(func=_results)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (profiles.ParameterError, runner.NotebookFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, profiles.ParameterError) else 1)


if __name__ == "__main__":
    main()
