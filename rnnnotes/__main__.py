"""Command line: ``python -m rnnnotes {list, run, book, sweep}``; see ``--help``.

Notebooks are read from $RNNNOTES_NOTEBOOKS (default ./notebooks), results go to $RNNNOTES_RESULTS (default
./results) and the book's sources are $RNNNOTES_BOOK (default ./book).
"""
import argparse
import sys

from . import profiles, runner, sweep


def _pairs(items, split_values=False):
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise profiles.ParameterError(f"expected key=value, got {item!r}")
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


def _run(args):
    print(runner.run(args.name, args.profile, _pairs(args.param), output=args.output))


def _book(args):
    print(f"book: {runner.build_book(args.profile, book_dir=args.book_dir)}")


def _sweep(args):
    axes = _pairs(args.grid, split_values=True)
    if args.seeds:
        axes["seed"] = args.seeds.split(",")
    outcomes = sweep.sweep(args.name, args.profile, axes)
    print(sweep.summary(outcomes))
    if any(status != "ok" for _, status, _ in outcomes):
        sys.exit(1)


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
    commands.choices["sweep"].add_argument("-g", "--grid", action="append", help="key=v1,v2,..., repeatable")
    commands.choices["sweep"].add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2")
    book = commands.add_parser("book", help="execute all notebooks and build the HTML book")
    book.add_argument("--profile", default="book")
    book.add_argument("--book-dir", help="build in a copy of the book's sources here (default: in place)")
    book.set_defaults(func=_book)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (profiles.ParameterError, runner.NotebookFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, profiles.ParameterError) else 1)


if __name__ == "__main__":
    main()
