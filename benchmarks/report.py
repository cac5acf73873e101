"""The benchmark report: a Markdown table of comparison rows between two markers of a page, a bar plot of the
ratios and a CSV of the raw rows, with the machine, torch version, devices, date and git revision."""
import csv
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

FIELDS = ("comparison", "setting", "device", "ours_s", "reference_s", "ratio", "note")
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"
RATIO_LABEL = "speed-up (reference time / rnnnotes time)"


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def git_revision(root):
    """The short commit hash of ``root``, marked ``+changes`` when the tree differs from it; ``?`` outside git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD")
    return (commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")) if commit else "?"


def header(*, torch_version, threads, devices, root, quick=False):
    """One line: machine, torch version, devices, date and git revision."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = datetime.date.today().isoformat()
    mode = "; quick run (short sizes, few repeats)" if quick else ""
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), {threads} torch threads; torch "
            f"{torch_version}; devices: {', '.join(devices)}; {date}; git {git_revision(root)}{mode}")


def _cell(value):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows):
    """The rows as a Markdown table: times in seconds and the speed-up, ``–`` where not measured."""
    titles = ("comparison", "setting", "device", "rnnnotes (s)", "reference (s)", "speed-up", "note")
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    lines += ["| " + " | ".join(_cell(r.get(f)) for f in FIELDS) + " |" for r in rows]
    return "\n".join(lines)


def section(rows, head, *, image, table_csv):
    """The text between the markers: header line, table, plot and a link to the CSV (paths relative to the page)."""
    return (f"{head}\n\nSpeed-up is the reference's time over rnnnotes' time: above 1, rnnnotes is faster.\n\n"
            f"{markdown_table(rows)}\n\n![{RATIO_LABEL}]({image})\n\n"
            f"Raw rows: {{download}}`{Path(table_csv).name} <{table_csv}>`.")


def replace_section(text, content):
    """``text`` with everything between the markers replaced by ``content`` (markers appended when missing)."""
    block = f"{START}\n{content}\n{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        return before + block + rest.split(END, 1)[1]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + block + "\n"


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows({f: r.get(f) for f in FIELDS} for r in rows)


def plot(rows, path):
    """Horizontal bars of the measured ratios on a log axis, a line at 1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    measured = [r for r in rows if r.get("ratio")]
    labels = [f"{r['comparison']}\n{r['setting']} [{r['device']}]" for r in measured]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(measured) + 1.2))
    ratios = [r["ratio"] for r in measured]
    ax.barh(range(len(measured)), ratios, color=["tab:green" if x >= 1 else "tab:red" for x in ratios])
    ax.set_yticks(range(len(measured)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(RATIO_LABEL)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows, page, head):
    """Write the CSV and the plot to ``images/`` beside ``page``, and the table into the page's marked section
    (the page is created with a title when missing). Returns the paths written."""
    page = Path(page)
    images = page.parent / "images"
    images.mkdir(parents=True, exist_ok=True)
    png, table_csv = images / f"{page.stem}.png", images / f"{page.stem}.csv"
    write_csv(rows, table_csv)
    plot(rows, png)
    text = page.read_text() if page.exists() else "# Benchmarks\n"
    content = section(rows, head, image=png.relative_to(page.parent).as_posix(),
                      table_csv=table_csv.relative_to(page.parent).as_posix())
    page.write_text(replace_section(text, content))
    return page, png, table_csv
