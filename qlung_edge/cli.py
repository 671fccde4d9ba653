"""The `qlung-edge` command: parses options and calls into the library.

Heavy modules (training, export, torch) are imported inside the commands that
need them, so `qlung-edge --help` and the device commands start fast.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import click

from qlung_edge import WINDOW_SAMPLES, __version__
from qlung_edge.errors import QLungError
from qlung_edge.logs import LEVELS, configure_logging

TORCH_PYTHON = (3, 9)
"""Training, evaluation and ONNX export run torch, which needs this Python; the device side runs on 3.8."""


def needs_torch(command: str) -> None:
    """A clear error where a command needs torch on a Python (JetPack 5's 3.8) that cannot have it."""
    if sys.version_info < TORCH_PYTHON:
        raise QLungError(
            f"`qlung-edge {command}` needs torch, hence Python {'.'.join(map(str, TORCH_PYTHON))}+"
            f" (this is {sys.version.split()[0]}): run it on the training machine; the device runs"
            " `daemon`, `export BUNDLE --trt`, `eval-stream`, `capture` and `bench` without torch"
        )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110, "terminal_width": 110})
@click.version_option(__version__, prog_name="qlung-edge")
@click.option("--log-level", type=click.Choice(LEVELS), default="warning", show_default=True, help="Log on stderr.")
@click.option("--log-json", is_flag=True, help="Log one JSON object a line (for journald or a log collector).")
def cli(log_level: str, log_json: bool) -> None:
    """QLung respiratory-sound classification from the training box to the stethoscope."""
    configure_logging(log_level, log_json)


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
    from training.datasets import scan_folder
    from training.summary import format_summary, summarize

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


@cli.command("quality-scan")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(["auto", "icbhi", "sprsound"]), default="auto", show_default=True)
@click.option("--calibrate-on", "calibrate_on", help="Choose the level mapping and gate thresholds on this split.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write rows and figures.")
@click.option("--png", "png_out", type=click.Path(dir_okay=False, path_type=Path), help="AQS histogram per split.")
@click.option("--list", "list_rows", is_flag=True, help="Print each recording's score, level and reasons.")
@click.option("--split", "only_split", help="Score only this split's recordings (e.g. test).")
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also report this bundle's learned quality estimate: AUROC with a bootstrap 95 % interval, windows gated.",
)
def quality_scan(
    data_dir: Path,
    dataset: str,
    calibrate_on: str | None,
    json_out: Path | None,
    png_out: Path | None,
    list_rows: bool,
    only_split: str | None,
    bundle: Path | None,
) -> None:
    """Score every recording's quality; AUROC against SPRSound's "Poor Quality" labels."""
    import dataclasses
    from dataclasses import asdict

    from qlung_edge.quality import QualityConfig
    from training.datasets import scan_folder
    from training.quality_report import (
        calibrate_aqs,
        format_separation,
        plot_distribution,
        score_recordings,
        separation,
    )

    for target in (json_out, png_out):
        if target is not None:  # the figures come after the whole scan: lose none of it to a missing folder
            target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan = scan_folder(data_dir, dataset)
    if only_split is not None:
        if calibrate_on is not None and calibrate_on != only_split:
            raise click.BadParameter(f"--calibrate-on {calibrate_on} is not the split scanned", param_hint="--split")
        chosen = [r for r in scan.recordings if r.split == only_split]
        if not chosen:
            found = ", ".join(sorted({r.split or "none" for r in scan.recordings}))
            message = f"no recordings in split {only_split!r} (there are: {found})"
            raise click.BadParameter(message, param_hint="--split")
        scan = dataclasses.replace(scan, recordings=chosen)
    config = QualityConfig()
    skipped: list[str] = []
    rows = score_recordings(scan.recordings, config, skipped=skipped)
    unusable = [str(p) for p in scan.problems] + skipped
    for problem in unusable:
        click.echo(f"skipped: {problem}", err=True)
    if not rows:
        raise QLungError(f"no recording could be scored ({len(unusable)} skipped)", path=data_dir)
    if calibrate_on is not None:
        training_rows = [r for r in rows if r.split == calibrate_on]
        if not training_rows:
            raise click.BadParameter(f"no recordings in split {calibrate_on!r}", param_hint="--calibrate-on")
        try:
            training_recordings = [r for r in scan.recordings if r.split == calibrate_on]
            config, _ = calibrate_aqs(training_recordings, config, progress=False)
        except ValueError as err:
            raise click.ClickException(f"cannot calibrate on {calibrate_on}: {err}") from None
        rows = score_recordings(scan.recordings, config, skipped=[])
        click.echo(f"calibrated on {len(training_rows)} {calibrate_on} recordings:")
        keys = ("entropy_band_hz", "entropy_floor", "entropy_ceil", "rms_floor_dbfs", "rms_ceil_dbfs", "quiet_dbfs",
                "max_clipped_fraction", "max_dropout_seconds")  # fmt: skip
        for key in keys:
            click.echo(f"  {key} = {getattr(config, key):g}")
    if list_rows:
        click.echo(f"\n{'recording':<34}{'split':<7}{'AQS':>6}{'entropy':>9}{'dBFS':>8}  label / reasons")
        for r in rows:
            q = r.report
            tail = " ".join(x for x in (r.record_label or "", ",".join(q.reasons)) if x)
            click.echo(f"{r.recording:<34}{r.split or '-':<7}{q.aqs:>6.3f}{q.entropy:>9.3f}{q.rms_dbfs:>8.1f}  {tail}")
    figures = {}
    for split in sorted({r.split or "all" for r in rows}):
        part = [r for r in rows if (r.split or "all") == split]
        figures[split] = separation(part)
        mean = sum(r.report.aqs for r in part) / len(part)
        click.echo(f"\n{split}: {len(part)} recordings, mean AQS {mean:.3f}")
        click.echo(format_separation(figures[split]))
        if png_out is not None:
            target = png_out.with_name(f"{png_out.stem}-{split}{png_out.suffix or '.png'}")
            plot_distribution(part, target, f"AQS, {scan.dataset} {split}")
            click.echo(f"  histogram: {target}")
    learned = _learned_quality(bundle, scan, png_out) if bundle is not None else None
    if json_out is not None:
        doc = {
            "config": config.to_dict(),
            "separation": figures,
            "learned": learned,
            "recordings": [
                {**asdict(r.report), "recording": r.recording, "split": r.split, "label": r.record_label} for r in rows
            ],
            "skipped": unusable,
        }
        json_out.write_text(json.dumps(doc, indent=1))
    if unusable:
        click.echo(f"\n{len(unusable)} recording(s) skipped (listed above): the figures leave them out", err=True)
        raise SystemExit(1)


MOST_REFUSED = 6
"""How many of the good records the learned estimate refuses most quality-scan names and draws."""


def _learned_quality(bundle: Path, scan: object, png_out: Path | None) -> dict[str, object]:
    """quality-scan --bundle: the bundle's P(poor) per record (mean over its windows) against the labels."""
    import numpy as np

    from qlung_edge.bundle import load_bundle
    from qlung_edge.evalstream import quality_estimates
    from qlung_edge.reporter import quality_smoothing, quality_threshold, trailing_means
    from training.metrics import auroc
    from training.quality_model import bootstrap_auroc

    loaded = load_bundle(bundle)
    threshold, pooled = quality_threshold(loaded), quality_smoothing(loaded)
    recordings = [r for r in scan.recordings if r.audio_path is not None]  # type: ignore[attr-defined]
    estimates = quality_estimates(bundle, recordings)
    out: dict[str, object] = {"threshold": threshold, "smoothing_windows": pooled}
    for split in sorted({r.split or "all" for r in recordings}):
        part = [r for r in recordings if (r.split or "all") == split and r.id in estimates]
        poor = np.array([r.record_label == "Poor Quality" for r in part])
        scores = np.array([float(np.mean(estimates[r.id])) for r in part])
        # Each record is one examination: P(poor) pooled over its latest windows, as the daemon's gate pools it
        # (here over all of them: the AQS reasons are not applied).
        good = {r.id: trailing_means(estimates[r.id], pooled) for r in part if r.record_label != "Poor Quality"}
        good_windows = np.concatenate(list(good.values())) if good else np.zeros(0)
        refused = float(np.mean(good_windows >= threshold)) if len(good_windows) else float("nan")
        line = (
            f"\n{split}: learned quality estimate of {bundle.name}: good records' windows it refuses (pooled over"
            f" {pooled}) {100 * refused:.1f} %"
        )
        figures: dict[str, object] = {"records": len(part), "good_windows_refused": refused}
        shares = [(float(np.mean(good[r.id] >= threshold)), r) for r in part if r.id in good]
        most = sorted((s for s in shares if s[0] > 0), key=lambda s: (-s[0], s[1].id))[:MOST_REFUSED]
        figures["most_refused_good_records"] = [{"recording": r.id, "label": r.record_label, "refused": share}
                                                for share, r in most]  # fmt: skip
        if poor.any() and not poor.all():
            low, high = bootstrap_auroc(scores, poor)
            figures.update(record_auroc=auroc(scores, poor), record_auroc_95=[low, high])
            line += f"; record AUROC {figures['record_auroc']:.3f} (95 % {low:.3f}-{high:.3f}, {int(poor.sum())} poor)"
        click.echo(line)
        if most:
            named = (f"{r.id} ({r.record_label or 'unlabelled'}) {100 * share:.0f} %" for share, r in most)
            click.echo("  good records it refuses most: " + ", ".join(named))
        out[split] = figures
        if png_out is not None and most:
            from training.quality_report import plot_refused_records

            target = png_out.with_name(f"{png_out.stem}-refused-{split}{png_out.suffix or '.png'}")
            title = f"good records the learned estimate of {bundle.name} refuses most, {split}"
            plot_refused_records([(r, share) for share, r in most], target, title)
            click.echo(f"  their spectrograms: {target}")
        if png_out is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
            bins = np.linspace(0, 1, 30)
            ax.hist(scores[~poor], bins=bins, alpha=0.7, density=True, label=f"other records ({int((~poor).sum())})")
            if poor.any():
                ax.hist(scores[poor], bins=bins, alpha=0.7, density=True, label=f"Poor Quality ({int(poor.sum())})")
            ax.axvline(threshold, color="k", linestyle="--", label="window gate threshold")
            ax.set_xlabel("mean P(poor) of a record's windows")
            ax.set_title(f"learned quality estimate, {split}")
            ax.legend()
            fig.tight_layout()
            target = png_out.with_name(f"{png_out.stem}-learned-{split}{png_out.suffix or '.png'}")
            fig.savefig(target)
            plt.close(fig)
            click.echo(f"  histogram: {target}")
    return out


def _seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint="--seeds") from None


@cli.command(context_settings={"ignore_unknown_options": False})
@click.option("--config", "recipe", required=True, help="Recipe YAML, or the name of one in training/recipes/.")
@click.argument("overrides", nargs=-1)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder (default runs/NAME).")
@click.option("--seeds", help="Comma-separated seeds: one run each, then mean +- std (e.g. 0,1,2,3,4).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--stop-after", type=int, help="Stop after this many epochs (resume later with --resume).")
def train(
    recipe: str, overrides: tuple[str, ...], out: Path | None, seeds: str | None, resume: bool, stop_after: int | None
) -> None:
    """Train QLung (or a baseline) from a recipe; overrides like train.epochs=3 data.root=DIR."""
    needs_torch("train")
    from training.config import load_recipe
    from training.engine import train as train_one
    from training.engine import train_seeds
    from training.metrics import format_scores

    config = load_recipe(recipe, list(overrides))
    out = out or Path("runs") / config.name
    if seeds:
        summary = train_seeds(config, out, _seed_list(seeds))
        click.echo(f"\n{config.name}: {len(summary['seeds'])} seeds, test set ({summary['selection']})")
        for key in ("specificity", "sensitivity", "score"):
            click.echo(f"  {key:<12} {summary[key]['mean']:.2f} +- {summary[key]['std']:.2f}")
        click.echo(f"  written to {out / 'seeds_summary.json'}")
        return
    summary = train_one(config, out, resume=resume, stop_after=stop_after)
    if "test" not in summary:
        click.echo(f"stopped after epoch {summary['stopped_after_epoch']}; continue with --resume --out {out}")
        return
    test = summary["test"]
    click.echo(f"\n{config.name}: selected epoch {summary['best_epoch']} ({summary['selection']})")
    click.echo(f"  test {format_scores(test)}")
    click.echo(f"  run folder {out}")


@cli.command("fit-gate")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--data", "data_root", help="Data folder (default: the checkpoint recipe's data.root).")
@click.option("--budget", type=click.FloatRange(0.0, 0.5, min_open=True), default=None,
              help="Share of good training windows the whole gate may refuse out of fold (default 0.03).")  # fmt: skip
@click.option("--later-budget", type=click.FloatRange(0.0, 0.5), default=None,
              help="Where the recordings' order is known (SPRSound), lower the budget until a gate fitted without "
                   "the latest fifth of the patients refuses at most this share of their good windows in 97.5 % of "
                   "resamples of them (default 0.05; 0: keep the budget as given).")  # fmt: skip
@click.option("--synthetic-windows", "synthetic", type=click.IntRange(0), default=None,
              help="Synthetically degraded windows among the quality head's positives (default 600; 0: only the "
                   "real Poor Quality records).")  # fmt: skip
def fit_gate(checkpoint: Path, out: Path, data_root: str | None, budget: float | None, later_budget: float | None,
             synthetic: int | None) -> None:  # fmt: skip
    """Fit the learned quality estimate and the gate's thresholds again on a trained checkpoint."""
    needs_torch("fit-gate")
    from training.quality_model import GATE_BUDGET, LATER_BUDGET, SYNTHETIC_WINDOWS, refit_gate

    estimate = refit_gate(checkpoint, out, data_root, GATE_BUDGET if budget is None else budget,
                          synthetic_windows=SYNTHETIC_WINDOWS if synthetic is None else synthetic,
                          later_budget=LATER_BUDGET if later_budget is None else (later_budget or None))  # fmt: skip
    f = estimate["figures"]
    later = f.get("later") or {}
    if "skipped" in later:
        click.echo(f"budget left at {100 * f['budget']:g} %: not checked on the latest patients ({later['skipped']})")
    elif later:
        target = 100 * later["later_budget"]
        kept = (f"at most {target:g} % of theirs in 97.5 % of resamples of them" if later["reachable"] else
                f"the AQS reasons alone refuse over {target:g} % of theirs; the estimate, almost none")  # fmt: skip
        click.echo(f"fitted without the latest {later['patients']} patients, the gate refused"
                   f" {100 * later['refused_at_budget_asked']:.2f} % of their good windows at the"
                   f" {100 * f['budget_asked']:g} % budget; budget {100 * f['budget']:.2f} % ({kept})")  # fmt: skip
    if f.get("estimate_off"):
        share = 100 * f["good_windows_refused_by_aqs"]
        click.echo(f"warning: the AQS reasons alone refuse {share:.2f} % of the good training windows, more than"
                   " the budget: the learned estimate refuses nothing", err=True)  # fmt: skip
    click.echo(f"too quiet below {estimate['quiet_dbfs']:g} dBFS; P(poor) threshold {estimate['threshold']:.4f}")
    refused = 100 * f["good_windows_refused"]
    low, high = (100 * v for v in f["good_windows_refused_patients_95"])
    click.echo(f"out of fold on {f['windows']} training windows: good windows refused {refused:.2f} %"
               f" (central 95 % over patient resamples at this threshold: {low:.2f}-{high:.2f} %; by the AQS"
               f" reasons alone {100 * f['good_windows_refused_by_aqs']:.2f} %), windows of Poor Quality"
               f" records refused {100 * (f['poor_record_windows_refused'] or 0):.1f} %, record AUROC"
               f" {f['cv_record_auroc']:.3f}")  # fmt: skip
    if "verdict" in estimate:
        _echo_verdict(estimate["verdict"], estimate["test_records"])
    click.echo(f"written to {out}; export it with `qlung-edge export {out} --out BUNDLE`")


def _echo_verdict(rule: dict[str, Any], records: dict[str, dict[str, float]]) -> None:
    click.echo(f"verdict rule calibrated again on {rule['calibrated_on']}: {rule['statistic']} evidence, DAS >="
               f" {rule['das_threshold']:g}, CAS >= {rule['cas_threshold']:g}, at least"
               f" {100 * rule['min_accepted_fraction']:g} % of windows accepted")  # fmt: skip
    click.echo("  test records (offline, learned gate): " + ", ".join(
        f"{task.replace('_', ' ')} Score {100 * s['score']:.2f}" for task, s in records.items()))  # fmt: skip


@cli.command("calibrate-verdict")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Checkpoint to write.")
@click.option("--data", "data_root", help="Data folder (default: the checkpoint recipe's data.root).")
def calibrate_verdict(checkpoint: Path, out: Path, data_root: str | None) -> None:
    """Calibrate a trained checkpoint's examination verdict rule again on its validation patients."""
    needs_torch("calibrate-verdict")
    from training.verdicts import recalibrate_verdict

    result = recalibrate_verdict(checkpoint, out, data_root)
    _echo_verdict(result["verdict"], result["test_records"])
    click.echo(f"written to {out}; export it with `qlung-edge export {out} --out BUNDLE`")


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")


def _audio_files(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given; folders searched (recursively) for audio files, an error for a folder with none."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not found:
                raise QLungError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder", path=path)
            files += found
        else:
            files.append(path)
    return files


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Model bundle (default: the one shipped with qlung-edge).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file: verdict, quality, window events.")
@click.option("--windows", "show_windows", is_flag=True, help="Also print every window.")
@click.option("--hop", type=float, help="Seconds between windows (default: the bundle's).")
def predict(files: tuple[Path, ...], bundle: Path | None, as_json: bool, show_windows: bool,
            hop: float | None) -> int:  # fmt: skip
    """Classify recordings (files or folders): one verdict per examination, the quality, the windows.

    The daemon's pipeline, read from files: the same windows, gate and verdict the bedside daemon gives."""
    from qlung_edge.classifier import Classifier

    paths = _audio_files(files)
    failed = 0
    with Classifier.from_bundle(bundle, hop_seconds=hop) as classifier:
        for path in paths:
            try:
                result = classifier.predict(path)
            except QLungError as err:
                click.echo(f"error: {err}", err=True)
                failed += 1
                continue
            if as_json:
                click.echo(json.dumps(result.to_dict(run_id=classifier.run_id)))
                continue
            q = result.quality
            verdicts = ", ".join(f"{v.task_2_2} ({v.task_2_1})" for v in result.verdicts) or "no verdict"
            gated = ", ".join(f"{k} {n}" for k, n in sorted(q.gated_by_reason.items()))
            line = f"{path}: {verdicts}; {result.seconds:.1f} s, {q.windows} windows, {q.accepted} classified"
            line += f", gated: {gated}" if gated else ""
            click.echo(line + (f", mean AQS {q.mean_aqs:.2f}" if q.mean_aqs is not None else ""))
            for verdict in result.verdicts:
                click.echo(f"  {verdict.start:.1f}-{verdict.end:.1f} s: {verdict.reason}")
            for note in result.notes:
                click.echo(f"  note: {note}")
            if show_windows:
                for w in result.windows:
                    what = w.prediction.label if w.prediction else f"gated: {', '.join(w.reasons or ())}"
                    click.echo(f"  window {w.window.start:6.1f}-{w.window.end:6.1f} s  AQS {w.quality.aqs:.2f}  {what}")
    if failed:
        click.echo(f"{failed} of {len(paths)} files could not be classified", err=True)
        return 2
    return 0


@cli.command("eval")
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(["auto", "icbhi", "sprsound"]), default="auto", show_default=True)
@click.option("--split", default="test", show_default=True, help="Split to evaluate ('all' for every cycle).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write eval.json and the PNGs here.")
@click.option("--device", default="auto", show_default=True)
@click.option("--thresholds", help="AQS thresholds for the risk-coverage table (default: from quantiles).")
def eval_command(
    checkpoint: Path, data: Path, dataset: str, split: str, out: Path | None, device: str, thresholds: str | None
) -> None:
    """Evaluate a checkpoint: Sp, Se, Score per class and device, risk-coverage by AQS."""
    needs_torch("eval")
    from training.evaluate import evaluate_checkpoint, format_result

    cuts = [float(x) for x in thresholds.split(",")] if thresholds else None
    result = evaluate_checkpoint(
        checkpoint, data, dataset=dataset, split=split, out_dir=out, device=device, thresholds=cuts
    )
    click.echo(format_result(result))
    if out is not None:
        click.echo(f"  written to {out}")


@cli.command("export")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Bundle folder to write (checkpoint in).")
@click.option("--force", is_flag=True, help="Replace an existing bundle folder.")
@click.option(
    "--check-audio",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also check parity on the WAVs in this folder (e.g. ../shared/data/icbhi-sample).",
)
@click.option("--int8", is_flag=True, help="Add model.int8.onnx (static QDQ quantization) and compare it with FP32.")
@click.option(
    "--calibration",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="ICBHI or SPRSound folder: calibrate on its train split, judge on its test split (default synthetic).",
)
@click.option("--trt", is_flag=True, help="Build model.plan with TensorRT (on the Jetson; SOURCE may be a bundle).")
@click.option("--precision", type=click.Choice(["fp16", "int8", "fp32"]), default="fp16", show_default=True)
@click.option("--max-batch", default=8, show_default=True, help="Largest batch of the engine's profile.")
@click.option("--workspace-mb", default=1024, show_default=True)
@click.option("--check", is_flag=True, help="With --trt: compare the engine with ONNX Runtime on the check windows.")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sign the bundle with this Ed25519 key (qlung-edge keygen); SOURCE may be a bundle.")  # fmt: skip
def export_command(
    source: Path,
    out: Path | None,
    force: bool,
    check_audio: Path | None,
    int8: bool,
    calibration: Path | None,
    trt: bool,
    precision: str,
    max_batch: int,
    workspace_mb: int,
    check: bool,
    sign_key: Path | None,
) -> None:
    """Checkpoint to a verified model bundle (ONNX, INT8); --trt builds the TensorRT engine on the device."""
    bundle = source
    if source.is_file():
        needs_torch("export CHECKPOINT")
        from export.onnx_export import export_bundle

        if out is None:
            raise click.UsageError("--out BUNDLE is needed when SOURCE is a checkpoint")
        export_bundle(
            source, out, force=force, real_audio=check_audio, int8=int8, calibration=calibration, log=click.echo
        )
        bundle = out
    elif not trt and sign_key is None:
        raise click.UsageError(f"{source} is a folder: give a checkpoint to export, --trt or --sign KEY")
    if trt:
        from export.tensorrt import BatchProfile, add_engine

        add_engine(
            bundle,
            precision=precision,
            profile=BatchProfile(1, 1, max_batch),
            workspace_mb=workspace_mb,
            check=check,
            log=click.echo,
        )
    if sign_key is not None:  # last: anything that rewrites the manifest drops an earlier signature
        from qlung_edge.bundle import load_bundle
        from qlung_edge.signing import sign_bundle

        load_bundle(bundle)  # sign only what verifies
        click.echo(f"signed {bundle} with key {sign_bundle(bundle, sign_key)}")


@cli.command()
@click.argument("private_key", type=click.Path(dir_okay=False, path_type=Path))
def keygen(private_key: Path) -> None:
    """A new Ed25519 key pair for signing bundles: PRIVATE_KEY (0600) and PRIVATE_KEY.pub for the devices."""
    from qlung_edge.signing import generate_keypair

    public, kid = generate_keypair(private_key)
    click.echo(f"private key {private_key} (keep it off the devices), public key {public}, key id {kid}")


def _soak(bundle: Path | None, minutes: float, speed: float, wav: Path | None, json_out: Path | None) -> None:
    import tempfile

    import soundfile as sf

    from qlung_edge.bench import breath_like
    from qlung_edge.classifier import SHIPPED_BUNDLE
    from qlung_edge.soak import run_soak

    with tempfile.TemporaryDirectory(prefix="qlung-soak-wav-") as scratch:
        if wav is None:  # int16 at 8 kHz, what the stethoscope sends
            wav = Path(scratch) / "breath.wav"
            sf.write(str(wav), breath_like(60.0, rate=8000, seed=3), 8000, subtype="PCM_16")
        report = run_soak(bundle or SHIPPED_BUNDLE, wav, minutes, speed=speed, log_line=click.echo)
    for line in report.lines():
        click.echo(line)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=1))
        click.echo(f"wrote {json_out}")
    if not (report.balanced and report.nothing_lost and report.samples_accounted and report.exit_status == 0):
        raise SystemExit(1)


@cli.command("model-info")
@click.option("--backbone", type=click.Choice(["edge-cnn", "ast"]), default="edge-cnn", show_default=True)
@click.option("--head", type=click.Choice(["angular", "linear"]), default="angular", show_default=True)
def model_info(backbone: str, head: str) -> None:
    """Parameters and FLOPs of a model for one 8 s window, front end included."""
    from training.models import QLungModel, count_flops, count_parameters

    model = QLungModel(backbone, head=head)
    total, front = count_flops(model), count_flops(model.frontend)
    click.echo(f"{backbone} ({head} head), one 8 s window at 16 kHz ({WINDOW_SAMPLES} samples):")
    click.echo(f"  parameters  {count_parameters(model):>14,}")
    click.echo(f"  FLOPs       {total:>14,}  ({total / 1e9:.3f} GFLOPs; multiply-add = 2)")
    click.echo(f"    front end {front:>14,}  ({front / 1e9:.3f} GFLOPs)")
    click.echo(f"    network   {total - front:>14,}  ({(total - front) / 1e9:.3f} GFLOPs)")


@cli.command()
@click.argument(
    "what",
    type=click.Choice(["quality", "link", "frontend", "model", "daemon", "training", "all", "soak"]),
    default="all",
)
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), help="For model/daemon.")
@click.option("--threads", type=int, help="N in the 1-vs-N thread comparison (default: all cores).")
@click.option("--quick", is_flag=True, help="Short runs: proves every figure is produced (CI), not how fast.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write figures as JSON.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the table (BENCHMARKS.md).")
@click.option("--minutes", type=click.FloatRange(min=0.5), default=30.0, show_default=True,
              help="soak: minutes of audio (streamed at --speed x real time).")  # fmt: skip
@click.option("--speed", type=click.FloatRange(min=1.0), default=20.0, show_default=True, help="soak: pace.")
@click.option("--wav", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="soak: the recording the simulated stethoscope loops (default: synthetic breath).")  # fmt: skip
def bench(what: str, bundle: Path | None, threads: int | None, quick: bool, json_out: Path | None,
          markdown: Path | None, minutes: float, speed: float, wav: Path | None) -> None:  # fmt: skip
    """Measure every speed target of ARCHITECTURE.md on this machine, ratios side by side.

    `bench soak` is apart: the daemon for --minutes of audio under link faults, unplugs, broker restarts, reloads
    and a full disk; it prints whether every window and every event is accounted for, and memory over time."""
    from qlung_edge.bench import run_bench, write_markdown

    if what == "soak":
        _soak(bundle, minutes, speed, wav, json_out)
        return

    if bundle is None and what in ("frontend", "model", "daemon", "all"):
        if what != "all":
            raise click.UsageError(f"bench {what} needs --bundle DIR")
        click.echo("no --bundle: only the quality, link and training benchmarks run", err=True)
        what_list = ["quality", "link", "training"]
    else:
        what_list = [what]
    runs = [run_bench(w, bundle, threads, quick, log=click.echo) for w in what_list]
    result = runs[0]
    for extra in runs[1:]:
        result.figures += extra.figures
    result.command = (
        "qlung-edge " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else f"qlung-edge bench {what}"
    )
    if json_out is not None:
        json_out.write_text(json.dumps(result.to_dict(), indent=1))
        click.echo(f"wrote {json_out}")
    if markdown is not None:
        write_markdown(result, markdown)
        click.echo(f"wrote {markdown}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True)
@click.option("--recordings", default=300, show_default=True, help="Synthetic ICBHI-layout recordings to train on.")
@click.option("--seed", default=0, show_default=True)
def demo(out: Path, recordings: int, seed: int) -> None:
    """Run the pipeline end to end on synthetic data made on the spot."""
    from qlung_edge.demo import run_demo

    run_demo(out, recordings=recordings, seed=seed)


@cli.command("simulate-device")
@click.argument("wav", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--link", type=click.Path(dir_okay=False, path_type=Path), help="Symlink to the port (default: temp).")
@click.option("--speed", default=1.0, show_default=True, help="Multiple of real time; 0 = as fast as read.")
@click.option("--frame-samples", default=256, show_default=True, help="Samples per link frame.")
@click.option("--loop", is_flag=True, help="Start over at the end of the file.")
@click.option("--autostart", is_flag=True, help="Stream without waiting for the host's START command.")
@click.option("--bit-errors", default=0.0, show_default=True, help="Probability of each bit being flipped.")
@click.option("--drop", default=0.0, show_default=True, help="Probability of a frame being lost.")
@click.option("--duplicate", default=0.0, show_default=True, help="Probability of a frame being sent twice.")
@click.option("--reorder", default=0.0, show_default=True, help="Probability of a frame swapping with the next.")
@click.option("--garbage", default=0.0, show_default=True, help="Probability of random bytes before a frame.")
@click.option("--jitter-ms", default=0.0, show_default=True, help="Random extra delay per frame.")
@click.option("--seed", default=0, show_default=True)
@click.option("--seconds", type=float, help="Stop after this long (default: end of file, or never with --loop).")
def simulate_device(
    wav: Path,
    link: Path | None,
    speed: float,
    frame_samples: int,
    loop: bool,
    autostart: bool,
    bit_errors: float,
    drop: float,
    duplicate: float,
    reorder: float,
    garbage: float,
    jitter_ms: float,
    seed: int,
    seconds: float | None,
) -> None:
    """Stream WAV through the link protocol on a pseudo-terminal, like a stethoscope on USB."""
    from firmware_bridge.simulator import DeviceSimulator, Impairments

    impairments = Impairments(bit_errors, drop, duplicate, reorder, garbage, jitter_ms)
    simulator = DeviceSimulator(wav, link, frame_samples, speed, loop, autostart, impairments=impairments, seed=seed)
    click.echo(f"connect to: {simulator.path}  (pty {simulator.tty})", err=False)
    click.echo(
        f"streaming {wav.name}: {simulator.sample_rate} Hz {simulator.sample_format.name.lower()}, "
        f"{simulator.frame_samples} samples a frame, {'waiting for START' if not autostart else 'started'}",
        err=True,
    )
    sys.stdout.flush()
    deadline = None if seconds is None else time.monotonic() + seconds
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with simulator:
        try:
            while not simulator.wait(0.2) and not stopping.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    break
        except KeyboardInterrupt:
            pass
    click.echo("device: " + " ".join(f"{k}={v}" for k, v in simulator.counters.as_dict().items()), err=True)


@cli.command()
@click.argument("source")
@click.option("--seconds", default=10.0, show_default=True, help="How much audio to capture.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write what was captured as a WAV.")
@click.option("--rate", type=int, help="stdin: the sample rate; mic: open at this rate instead of the native one.")
@click.option("--format", "sample_format", type=click.Choice(["s16le", "s24le", "f32le"]), help="stdin: sample format.")
def capture(source: str, seconds: float, out: Path | None, rate: int | None, sample_format: str | None) -> None:
    """Read SOURCE (mic:, serial:, file:, stdin:) and report what arrived: rate, level, gaps, counters."""
    import numpy as np

    from firmware_bridge.sources import open_source

    options: dict[str, object] = {"rate": rate, "format": sample_format}
    handle = open_source(source, **options)
    blocks = []
    got = 0.0
    for block in handle.blocks():
        blocks.append(block)
        got += block.duration
        if got >= seconds:
            handle.stop()
            break
    if not blocks:
        raise QLungError("no audio arrived", path=source)
    rates = sorted({b.sample_rate for b in blocks})
    samples = np.concatenate([b.samples for b in blocks])
    gaps = sum(b.duration for b in blocks if b.gap)
    finite = samples[np.isfinite(samples)].astype(np.float64)
    bad = len(samples) - len(finite)
    rms = float(np.sqrt(np.mean(finite**2))) if len(finite) else 0.0
    level = f"{20 * np.log10(max(rms, 1e-10)):.1f} dBFS" if len(finite) else "no finite samples"
    if bad:
        level += f" ({bad} NaN/inf samples left out)"
    click.echo(f"{source}: {got:.2f} s at {', '.join(map(str, rates))} Hz, {level}, {gaps:.3f} s concealed")
    for note in handle.notes:
        click.echo(f"note: {note}")
    if handle.stats():
        click.echo(" ".join(f"{k}={v}" for k, v in handle.stats().items()))
    if out is not None:
        import soundfile as sf

        sf.write(str(out), samples, rates[-1], subtype="FLOAT")
        click.echo(f"wrote {out}")


@cli.command()
@click.option("--bundle", type=click.Path(file_okay=False, path_type=Path), help="Model bundle folder.")
@click.option("--source", help="mic:[DEVICE] | serial:PORT | file:PATH | stdin:")
@click.option(
    "--sink", "sinks", multiple=True, help="jsonl:- | jsonl:PATH | mqtt://[user:pw@]host[:port]/prefix (repeat)."
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), help="TOML file; flags win.")
@click.option("--hop", "hop_seconds", type=float, help="Seconds between windows (default: the bundle's).")
@click.option("--backend", type=click.Choice(["auto", "onnx", "tensorrt", "torch"]))
@click.option("--precision", type=click.Choice(["fp32", "int8"]))
@click.option("--threads", type=int, help="Inference threads (ONNX Runtime intra-op).")
@click.option(
    "--incremental/--whole-window",
    default=None,
    help="Compute each log-mel frame once and run the network alone (default when the bundle has the pieces).",
)
@click.option(
    "--frontend", type=click.Choice(["dft", "fft", "pocketfft"]), help="Incremental front end (default: the fastest)."
)
@click.option("--max-pending", type=int, help="Accepted windows waiting for inference before the oldest is dropped.")
@click.option("--http", help="[HOST:]PORT for /health and /metrics (host defaults to 127.0.0.1).")
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Run only bundles signed by this Ed25519 public key (repeat for several).")  # fmt: skip
@click.option("--audit-dir", type=click.Path(file_okay=False, path_type=Path), help="Save clips of abnormal findings.")
@click.option("--audit-minutes", type=float, help="Raw audio kept in memory for audit clips.")
@click.option("--audit-max-mb", type=float, help="Size cap of the audit folder.")
@click.option("--rate", type=int, help="stdin: sample rate; mic: open at this rate instead of the native one.")
@click.option("--format", "sample_format", type=click.Choice(["s16le", "s24le", "f32le"]), help="stdin: format.")
@click.option("--realtime/--fast", default=None, help="file: pace at real time, or as fast as possible (default).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="torch backend: the checkpoint.")
@click.option("--check", is_flag=True, help="Validate config, bundle, backend and source, then exit.")
def daemon(config_file: Path | None, check: bool, sinks: tuple[str, ...], **flags: object) -> None:
    """Stream SOURCE through the quality gate and the model; events to the sinks.

    SIGTERM/SIGINT finish the current window, flush the sinks and exit 0; SIGHUP reloads the bundle.
    """
    early: list[int] = []  # signals that come while the bundle loads: acted on once the daemon can
    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT) if hasattr(signal, "SIGHUP") else ():
        signal.signal(sig, lambda number, _: early.append(number))
    from qlung_edge.daemon import Daemon, DaemonConfig, check_setup

    values: dict[str, object] = {k: v for k, v in flags.items() if v is not None}
    source_options = {
        key: values.pop(flag) for flag, key in (("rate", "rate"), ("sample_format", "format"), ("realtime", "realtime"))
        if flag in values
    }  # fmt: skip
    if sinks:
        values["sinks"] = list(sinks)
    if values.get("trusted_keys") == ():
        values.pop("trusted_keys")
    elif "trusted_keys" in values:
        values["trusted_keys"] = [str(p) for p in values["trusted_keys"]]  # type: ignore[union-attr]
    if config_file is not None:
        config = DaemonConfig.from_toml(config_file, values)
    else:
        config = DaemonConfig.from_dict(values, where="flags")
    config.source_options = {**config.source_options, **source_options}
    if check:
        for line in check_setup(config):
            click.echo(line)
        click.echo("check passed")
        return
    runner = Daemon(config)
    runner.install_signal_handlers()
    for number in early:
        if number == getattr(signal, "SIGHUP", None):
            runner.reload()
        else:
            runner.stop()
    status = runner.run()
    if status:
        raise SystemExit(status)


@cli.command("eval-stream")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Which split to replay ('all' for every recording).")
@click.option("--hop", "hop_seconds", type=float, help="Seconds between windows (default: the bundle's).")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--limit", type=int, help="Only the first N recordings.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the report and confusion PNGs."
)
def eval_stream_command(
    bundle: Path,
    data: Path,
    split: str,
    hop_seconds: float | None,
    precision: str,
    threads: int,
    limit: int | None,
    json_out: Path | None,
    out: Path | None,
) -> None:
    """Replay recordings through the daemon's pipeline: window-level Score, coverage, gate reasons, and each
    recording's verdict scored as SPRSound scores records (Tasks 2-1 and 2-2)."""
    from qlung_edge.daemon import DaemonConfig
    from qlung_edge.evalstream import eval_stream, format_report, write_report

    config = DaemonConfig(hop_seconds=hop_seconds, precision=precision, threads=threads)
    report = eval_stream(bundle, data, None if split == "all" else split, config, limit=limit, out_dir=out)
    for line in format_report(report):
        click.echo(line)
    if json_out is not None:
        write_report(report, json_out)
        click.echo(f"wrote {json_out}")


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write it here instead of stdout.")
def schema(out: Path | None) -> None:
    """The JSON Schema of the daemon's events (the copy shipped in qlung_edge/schema/ is generated by this)."""
    from qlung_edge.events import schema_text

    if out is None:
        click.echo(schema_text(), nl=False)
    else:
        out.write_text(schema_text())
        click.echo(f"wrote {out}")


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
