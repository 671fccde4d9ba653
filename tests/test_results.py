"""scripts/results.py on the seeds archived in the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_results_leave_out_a_group_without_seeds_only_when_asked(tmp_path: Path) -> None:
    """scripts/results.py on a seed archived in the repository and a recipe not trained yet."""
    repo = Path(__file__).resolve().parents[1]
    kept = repo / "seed-reports" / "ce-edge-sprsound-windows-event-mix"
    groups = ["--group", f"CE + mixing={kept}", "--group", f"new={tmp_path / 'none'}", "--pair", "new,CE + mixing"]
    command = [sys.executable, str(repo / "scripts" / "results.py"), *groups, "--out", str(tmp_path / "R.md")]
    refused = subprocess.run(command, capture_output=True, text=True, cwd=repo)
    assert refused.returncode != 0 and "no seed*/summary.json" in refused.stderr
    done = subprocess.run([*command, "--skip-empty"], capture_output=True, text=True, cwd=repo)
    assert done.returncode == 0 and "new: no finished seed" in done.stderr
    text = (tmp_path / "R.md").read_text()
    assert "| figure | CE + mixing |" in text and "Paired per-seed" not in text
