"""The `qlung-edge` command: parses options and calls into the library.

Heavy modules (training, export, torch) are imported inside the commands that
need them, so `qlung-edge --help` and the device commands start fast.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import click

from qlung_edge import __version__
from qlung_edge.errors import QLungError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qlung-edge")
def cli() -> None:
    """QLung respiratory-sound classification from the training box to the stethoscope."""


@cli.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--recordings", default=120, show_default=True, help="Recordings per layout.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--layout",
    type=click.Choice(["both", "icbhi", "sprsound"]),
    default="both",
    show_default=True,
    help="Which folder layouts to write.",
)
@click.option("--ood", is_flag=True, help="Out-of-distribution devices and harsher degradations.")
@click.option(
    "--degraded-fraction", type=click.FloatRange(0.0, 1.0), default=None, help="Share of recordings with a degradation."
)
def synth(out: Path, recordings: int, seed: int, layout: str, ood: bool, degraded_fraction: float | None) -> None:
    """Write synthetic stethoscope recordings with ground truth (ICBHI and SPRSound layouts)."""
    from dataclasses import replace

    from training.synth import SynthConfig, synthesize

    config = SynthConfig.out_of_distribution(recordings, seed) if ood else SynthConfig(recordings=recordings, seed=seed)
    if degraded_fraction is not None:
        config = replace(config, degraded_fraction=degraded_fraction)
    layouts = ("icbhi", "sprsound") if layout == "both" else (layout,)
    start = time.perf_counter()
    written = synthesize(out, config, layouts)
    for name, folder in written.items():
        click.echo(f"{name}: {folder} (ground truth in {folder / 'ground_truth.json'})")
    click.echo(f"wrote {recordings * len(layouts)} recordings in {time.perf_counter() - start:.1f} s")


@cli.command("data-summary")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(["auto", "icbhi", "sprsound"]), default="auto", show_default=True)
@click.option(
    "--annotations-only", is_flag=True, help="Do not open audio files (ICBHI): bookkeeping from the .txt files alone."
)
@click.option(
    "--split-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ICBHI split file, if not inside DATA_DIR.",
)
@click.option("--strict", is_flag=True, help="Stop at the first problem instead of skipping and reporting it.")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the summary as JSON."
)
def data_summary(
    data_dir: Path, dataset: str, annotations_only: bool, split_file: Path | None, strict: bool, json_out: Path | None
) -> None:
    """Scan an ICBHI or SPRSound folder and print recordings, cycles per class, device and split."""
    from training.summary import format_summary, scan_folder, summarize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # problems are listed in the summary instead
        scan = scan_folder(
            data_dir, dataset, with_audio=False if annotations_only else None, split_file=split_file, strict=strict
        )
    summary = summarize(scan)
    click.echo(format_summary(summary))
    if json_out is not None:
        json_out.write_text(json.dumps(summary, indent=1))
        click.echo(f"\nsummary written to {json_out}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--recordings", default=120, show_default=True, help="Synthetic recordings per layout.")
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, recordings: int, seed: int) -> None:
    """Run the pipeline end to end on synthetic data made on the spot."""
    from qlung_edge.demo import run_demo

    run_demo(out, recordings=recordings, seed=seed)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        status = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except QLungError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
