"""The README tells the truth: generated blocks match their sources, examples fit the schema, links resolve."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from qlung_edge.events import EVENT_TYPES, validate

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "ARCHITECTURE.md"]


def test_generated_blocks_match_the_files_they_come_from() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme_figures.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_benchmark_block_quotes_benchmarks_md() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_figures

    rows = readme_figures.benchmark_rows((REPO / "BENCHMARKS.md").read_text())
    block = readme_figures.bench_block((REPO / "BENCHMARKS.md").read_text())
    for name in readme_figures.BENCH_FIGURES:
        assert f"| {name} | {rows[name]['value']} {rows[name]['unit']} |" in block


def test_example_events_are_real_schema_events_one_of_each_type() -> None:
    text = (REPO / "README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith('{"schema":')]
    events = [json.loads(line) for line in lines]
    for event in events:
        validate(event)
    assert {e["type"] for e in events} == {cls.type for cls in EVENT_TYPES}
    assert {e["status"] for e in events if e["type"] == "window"} >= {"classified", "gated"}


def test_links_stay_inside_the_repository_and_resolve() -> None:
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text.replace("../shared/data", ""), f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)\)", text):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_the_readme_starts_with_the_two_set_up_commands() -> None:
    head = (REPO / "README.md").read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in head.splitlines()[1:] if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
