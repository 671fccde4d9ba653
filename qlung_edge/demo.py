"""`qlung-edge demo`: the whole pipeline on data made on the spot.

So far: synthesise both data set layouts, read them back with the real loaders,
check what was read against the generator's ground truth and print the summary.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click


def _step(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def run_demo(out: Path, recordings: int = 120, seed: int = 0) -> None:
    from training.summary import format_summary, scan_folder, summarize
    from training.synth import SynthConfig, load_ground_truth, synthesize

    begin = time.perf_counter()
    t = _step(f"1. synthesise {recordings} recordings per layout into {out}")
    folders = synthesize(out / "data", SynthConfig(recordings=recordings, seed=seed))
    click.echo(f"   done in {time.perf_counter() - t:.1f} s")

    for layout, folder in folders.items():
        t = _step(f"2. read the {layout} layout back with the real loader")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scan = scan_folder(folder, layout)
        truth = load_ground_truth(folder / "ground_truth.json")
        expected = sum(len(s.cycles) for s in truth if not (layout == "sprsound" and s.poor_quality))
        got = len(scan.cycles())
        if got != expected or len(scan.recordings) != len(truth) or scan.problems:
            raise click.ClickException(
                f"{layout}: loader read {got} cycles, ground truth has {expected}; problems: {scan.problems[:3]}"
            )
        click.echo(format_summary(summarize(scan)))
        click.echo(
            f"   ground truth matches: {len(truth)} recordings, {expected} cycles ({time.perf_counter() - t:.1f} s)"
        )

    click.secho(f"\ndemo finished in {time.perf_counter() - begin:.1f} s", bold=True)
