"""Write the README's generated blocks from the files the project generates (BENCHMARKS.md, ...).

A figure typed into the README by hand goes stale; here every block between
`<!-- generated:NAME -->` and `<!-- end:NAME -->` is rebuilt from its source, and
tests/test_readme.py fails when the README and its sources disagree.

    python scripts/readme_figures.py          # rewrite README.md in place
    python scripts/readme_figures.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from results import GLANCE_HEADING, WINDOW_RULES  # noqa: E402  (the rows' names, one source)

BENCH_FIGURES = [
    "AQS streaming, 1 s blocks",
    "signal path to the gate, 16 kHz device",
    "front end + model, ORT FP32, 1 window, 1 thread",
    "ORT FP32 vs torch eager, 1 window",
    "full window: CPU per audio s at 1 s hop",
    "incremental: CPU per audio s at 1 s hop",
    "incremental vs full window, CPU at 1 s hop",
    "incremental vs full window, the daemon's own work at 1 s hop",
    "incremental vs full window, CPU at 1 s hop, read as fast as possible",
    "incremental at 0.25 s hop vs full window at 1 s hop",
    "incremental at 0.25 s hop vs full window at 1 s hop, read as fast as possible",
    "incremental: what pacing adds at 1 s hop",
    "incremental: window-to-event latency p99, 1 s hop",
    "default path: peak RSS",
    "default path: start (spawn to first event)",
    "overload: audio samples lost",
    "training: as it is vs as it was",
]
"""The headline speed figures the README quotes from BENCHMARKS.md (all of them are there)."""


def benchmark_rows(text: str) -> dict[str, dict[str, str]]:
    """BENCHMARKS.md's table as {figure: {value, unit, target, verdict, note}}."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] not in ("section", "---"):
            rows[cells[1]] = dict(zip(("value", "unit", "target", "verdict", "note"), cells[2:]))
    return rows


def bench_block(benchmarks: str) -> str:
    rows = benchmark_rows(benchmarks)
    header = re.search(r"- date: (\S+)", benchmarks)
    machine = re.search(r"- machine: (.+)", benchmarks)
    lines = [
        f"From [BENCHMARKS.md](BENCHMARKS.md) ({machine.group(1) if machine else 'machine unknown'}, "
        f"{header.group(1)[:10] if header else 'date unknown'}; 1 thread):",
        "",
        "| figure | value | target | verdict |",
        "| --- | ---: | --- | --- |",
    ]
    for name in BENCH_FIGURES:
        row = rows.get(name)
        if row is None:
            lines.append(f"| {name} | not measured | | |")
            continue
        lines.append(f"| {name} | {row['value']} {row['unit']} | {row['target']} | {row['verdict']} |")
    return "\n".join(lines)


def results_block(results: str) -> str:
    """RESULTS.md's tables and closing line, as they are, below where they come from."""
    command = re.search(r"- command: `(.+)`", results)
    body = results.split("\n\n", 3)[-1].strip() if results.count("\n\n") >= 3 else results.strip()
    source = f"From [RESULTS.md](RESULTS.md) (`{command.group(1)}`):" if command else "From RESULTS.md:"
    return source + "\n\n" + body


EVENT_MIX_FIGURES = (
    "offline, cycle level (one prediction per annotated event)",
    "deployed (eval-stream), window level, accepted windows",
    "deployed, window level, accepted windows, each pooled with the window before it",
    "validation patients, window level, every labelled window (offline)",
    "validation patients, window level, the same, each pooled with the window before it",
    *(f"deployed, window level, recall of accepted {name} windows" for name in ("normal", "crackle", "wheeze", "both")),
    "deployed, record level, Task 2-1 Score",
    "deployed, record level, Task 2-2 Score",
    "validation patients, record level, Task 2-1 Score (offline; the verdict rule is fitted on them)",
    "validation patients, record level, Task 2-2 Score (offline; the verdict rule is fitted on them)",
    "deployed, record level, % of normal records called Poor Quality",
    "deployed, % of windows of records not labelled poor that the gate refuses",
    "learned quality estimate, record AUROC vs Poor Quality (x 100)",
    "training, % of epochs after the first whose validation windows were nearly all called abnormal (Sp < 5 %)",
    *(
        f"{split} patients, window level (offline), {text}, minus the plain argmax (points)"
        for text in WINDOW_RULES.values()
        for split in ("validation", "test")
    ),
)
"""The rows of RESULTS-event-mix.md the README quotes."""

GATE_FIGURES = (
    "deployed, % of windows of records not labelled poor that the gate refuses",
    "deployed, % of windows of Poor Quality records that the gate refuses",
    "deployed, record level, Task 2-1 Score",
    "deployed, record level, Task 2-2 Score",
    "deployed, record level, % of normal records called Poor Quality",
    "gate fitted without the latest fifth of the training patients (recording order), % of their good windows"
    " refused at the budget asked (3 % by default)",
    "the same, without a random fifth of the patients (mean of five)",
    "budget lowered until the latest fifth keep to 5 %: % of good training windows refused out of fold",
)
"""The rows of GATE.md the README quotes; the first five also paired (the others come from the same training
recordings in both groups)."""


def headline_block(results: str, source: str, figures: tuple[str, ...], paired: tuple[str, ...] | None = None) -> str:
    """A results file's table rows whose figure is one of `figures` (in the paired per-seed tables, one of
    `paired` where given), with its headings, below where they come from."""
    command = re.search(r"- command: `(.+)`", results)
    body = results.split("\n\n", 2)[-1] if results.count("\n\n") >= 2 else results
    sections = body.split("\n\n")
    glance = [i for i, section in enumerate(sections) if section.startswith(GLANCE_HEADING)]
    if glance:  # a line per group, for the event-mix block; these blocks quote rows of the wide table
        del sections[glance[0] : glance[0] + 2]
    body = "\n\n".join(sections)
    lines = [f"From [{source}]({source}) (`{command.group(1) if command else source}`):", ""]
    in_pairs = False
    for line in body.splitlines():
        in_pairs = in_pairs or line.startswith("Paired per-seed")
        if line.startswith("| ") and not line.startswith(("| figure |", "| --- |")):
            if line[2:].split(" | ")[0] not in (paired if in_pairs and paired is not None else figures):
                continue
        elif line.startswith(("- command:", "Balanced minus", "Least Poor Quality", "Seed ensemble")):
            continue
        lines.append(line)
    return "\n".join(lines).rstrip() + "\n"


def event_mix_block(results: str) -> str:
    """RESULTS-event-mix.md's recipes, its at-a-glance table (one line per recipe) and its QLung − cross-entropy
    pairs at the headline rows. Its wide table (a column per recipe, every figure) stays in the file: two dozen
    columns cannot be read in the README."""
    command = re.search(r"- command: `(.+)`", results)
    lines = [f"From [RESULTS-event-mix.md](RESULTS-event-mix.md) (`{command.group(1) if command else 'results.py'}`;"
             " every figure of every recipe is there):", ""]  # fmt: skip
    for line in results.splitlines():  # the recipes, listed above the tables
        if line.startswith((GLANCE_HEADING, "| ")):
            break
        if line.startswith("- ") and not line.startswith("- command:"):
            lines.append(line)
    sections = results.split("\n\n")
    for i, section in enumerate(sections):
        if section.startswith(GLANCE_HEADING) and i + 1 < len(sections):
            lines += ["", section, "", sections[i + 1]]
        elif re.match(r"Paired per-seed differences, QLung[^−]* − (CE|cross-entropy)", section):
            rows = [
                row
                for row in sections[i + 1].splitlines()
                if row.startswith(("| figure |", "| --- |")) or row[2:].split(" | ")[0] in EVENT_MIX_FIGURES
            ]
            lines += ["", section, "", *rows]
    return "\n".join(lines).rstrip() + "\n"


def blocks() -> dict[str, str]:
    out = {"bench": bench_block((REPO / "BENCHMARKS.md").read_text())}
    if (REPO / "RESULTS.md").exists():
        out["results"] = results_block((REPO / "RESULTS.md").read_text())
    if (REPO / "RESULTS-event-mix.md").exists():
        out["results-event-mix"] = event_mix_block((REPO / "RESULTS-event-mix.md").read_text())
    if (REPO / "GATE.md").exists():
        out["gate"] = headline_block((REPO / "GATE.md").read_text(), "GATE.md", GATE_FIGURES, GATE_FIGURES[:5])
    return out


def render(readme: str) -> str:
    for name, body in blocks().items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- end:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- generated:{name} --> ... <!-- end:{name} --> block")
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    path = REPO / "README.md"
    current = path.read_text()
    wanted = render(current)
    if "--check" in sys.argv[1:]:
        if current != wanted:
            print("README.md is out of date: run python scripts/readme_figures.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
