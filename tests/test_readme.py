"""The README tells the truth: generated blocks match their sources, examples fit the schema, links resolve."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_the_python_example_runs_on_a_real_recording(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "README.md").read_text()
    start = text.index("```python\nfrom qlung_edge import Classifier") + len("```python\n")
    example = text[start : text.index("```", start)]
    assert len(example.strip().splitlines()) <= 5
    wav = shared_data / "icbhi-sample" / "101_1b1_Al_sc_Meditron.wav"
    exec(compile(example.replace('"recording.wav"', repr(str(wav))), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] in ("Normal", "CAS", "DAS", "Poor") and 0.0 <= float(printed[-1]) <= 1.0


def test_the_licence_file_is_the_one_setup_cfg_names() -> None:
    setup = (REPO / "setup.cfg").read_text()
    assert re.search(r"^license = MIT$", setup, re.M) and re.search(r"^license_files = LICENSE$", setup, re.M)
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_the_event_mix_block_keeps_the_glance_table_and_only_the_qlung_against_cross_entropy_pairs() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import readme_figures

    results = (
        "- command: `x`\n- A: recipe `a`\n\nIntro.\n\n"
        f"{readme_figures.GLANCE_HEADING} (test):\n\n| recipe | seeds |\n| --- | ---: |\n| A | 3 |\n\n"
        "| figure | A |\n| --- | ---: |\n| deployed, record level, Task 2-1 Score | 70.00 |\n\n"
        "Paired per-seed differences, QLung + m − CE + m (seeds present in both):\n\n"
        "| figure | per seed | mean ± std |\n| --- | --- | ---: |\n"
        "| deployed, record level, Task 2-1 Score | +1.00 | 1.00 |\n| some other row | +2.00 | 2.00 |\n\n"
        "- a note below the tables, not a recipe\n\n"
        "Paired per-seed differences, CE + m − cross-entropy (seeds present in both):\n\n"
        "| figure | per seed | mean ± std |\n| --- | --- | ---: |\n"
        "| deployed, record level, Task 2-1 Score | +3.00 | 3.00 |\n"
    )
    block = readme_figures.event_mix_block(results)
    assert "- A: recipe `a`" in block and "- command:" not in block and "(`x`;" in block
    assert "| A | 3 |" in block and "| deployed, record level, Task 2-1 Score | 70.00 |" not in block
    assert "QLung + m − CE + m" in block and "| deployed, record level, Task 2-1 Score | +1.00 | 1.00 |" in block
    assert "some other row" not in block and "CE + m − cross-entropy" not in block and "+3.00" not in block
    assert "a note below the tables" not in block
