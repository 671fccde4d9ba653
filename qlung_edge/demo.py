"""`qlung-edge demo`: the whole pipeline on data made on the spot.

Synthesise both data set layouts, read them back with the real loaders and check them against the generator's
ground truth; train the demo recipe with QLung and with plain cross-entropy; evaluate both on the held-out test
split and on a second synthetic set with other devices and harsher degradations; print the comparison.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import soundfile as sf

from firmware_bridge.sources import FileSource
from qlung_edge.audio import read_audio
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.sinks import JsonLinesSink, Sink


def _step(title: str) -> float:
    click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def run_demo(out: Path, recordings: int = 300, seed: int = 0) -> None:
    from training.config import load_recipe
    from training.datasets import scan_folder
    from training.engine import train
    from training.evaluate import evaluate_checkpoint
    from training.metrics import format_scores
    from training.summary import format_summary, summarize
    from training.synth import SynthConfig, load_ground_truth, synthesize

    begin = time.perf_counter()
    # Fewer SPRSound-layout recordings: they only show that its loader reads what the generator wrote.
    sprsound_recordings = min(recordings, 80)
    t = _step(f"1. synthesise {recordings} ICBHI-layout and {sprsound_recordings} SPRSound-layout recordings in {out}")
    folders = synthesize(out / "data", SynthConfig(recordings=recordings, seed=seed), ("icbhi",))
    folders |= synthesize(out / "data", SynthConfig(recordings=sprsound_recordings, seed=seed), ("sprsound",))
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

    t = _step("3. synthesise an out-of-distribution set: other devices, harsher degradations")
    ood = synthesize(out / "data-ood", SynthConfig.out_of_distribution(max(recordings // 3, 20), seed + 1), ("icbhi",))
    click.echo(f"   done in {time.perf_counter() - t:.1f} s")

    results = {}
    for loss, overrides in (("qlung", []), ("ce", ["loss.head=linear", "loss.margin=none"])):
        t = _step(f"4. train the demo recipe with the {loss} loss")
        config = load_recipe("demo", [f"data.root={folders['icbhi']}", f"data.cache_dir={out / 'cache'}", *overrides])
        summary = train(replace(config, name=f"demo-{loss}"), out / "runs" / loss)
        took = time.perf_counter() - t
        click.echo(f"   trained in {took:.1f} s; epoch {summary['best_epoch']} selected on validation patients")
        checkpoint = out / "runs" / loss / "best.pt"
        ood_result = evaluate_checkpoint(
            checkpoint, ood["icbhi"], split="all", out_dir=out / "runs" / loss / "ood", cache_dir=str(out / "cache")
        )
        results[loss] = (summary["test"], ood_result["metrics"])

    _step("5. QLung against cross-entropy (synthetic data; Score = (Sp + Se) / 2)")
    click.echo(f"   {'loss':<8}{'in-distribution test':<36}out of distribution (other devices)")
    for loss, (inside, outside) in results.items():
        click.echo(f"   {loss:<8}{format_scores(inside):<36}{format_scores(outside)}")
    click.echo(f"   run folders, confusion matrices and risk-coverage plots: {out / 'runs'}")

    from export.onnx_export import export_bundle

    t = _step("6. export the QLung model: ONNX bundle with parity check, op audit and INT8")
    export_bundle(
        out / "runs" / "qlung" / "best.pt",
        out / "bundle",
        force=True,
        int8=True,
        calibration=folders["icbhi"],
        log=lambda line: click.echo(f"   {line}"),
    )
    click.echo(f"   done in {time.perf_counter() - t:.1f} s")

    t = _step("7. stream a synthetic recording through the daemon with the bundle (file source, real time x20)")
    stream_demo_recording(out / "bundle", folders["icbhi"], out / "stream-events.jsonl")
    click.echo(f"   done in {time.perf_counter() - t:.1f} s; every event in {out / 'stream-events.jsonl'}")
    click.secho(f"\ndemo finished in {time.perf_counter() - begin:.1f} s", bold=True)


def event_line(event: dict[str, Any]) -> str:
    """One printed line per daemon event: a window's time, quality and call, an examination's verdict, or the
    named fields of the other events."""
    if event["type"] == "verdict":
        return (
            f"   [verdict] Task 2-1 {event['task_2_1']}, Task 2-2 {event['task_2_2']} ({event['ended_by']}): "
            f"{event['reason']}"
        )
    if event["type"] == "exam":
        why = [event["reason"], ", ".join(f"{k} {v}" for k, v in event["identity"].items() if v)]
        return f"   [exam] {event['exam_id']} starts at {event['start']:.1f} s ({'; '.join(w for w in why if w)})"
    if event["type"] != "window":
        keys = [k for k in ("model", "backend", "source", "counts") if k in event]
        return f"   [{event['type']}] " + ", ".join(f"{k}={event[k]}" for k in keys)
    w = event["window"]
    line = f"   {w['start']:6.1f}-{w['end']:5.1f} s  AQS {event['quality']['aqs']:.2f}  {event['status']:<10}"
    if event["status"] == "classified":
        exam = event["exam"]
        line += f" {event['prediction']['label']:<8} exam: {exam['label']} over {exam['windows']} windows"
    elif event["status"] == "gated":
        line += f" {', '.join(event['reasons'])}: {event['advice']}"
    return line + f"  ({event['latency_ms']:.0f} ms)"


def stream_demo_recording(bundle: Path, data: Path, events_file: Path) -> None:
    """The longest synthetic recording, with 3 s of it silenced, through `Daemon` and its quality gate."""
    from training.synth import load_ground_truth

    clean = [spec for spec in load_ground_truth(data / "ground_truth.json") if not spec.degradations]
    longest = data / f"{max(clean, key=lambda spec: (spec.duration, spec.name)).name}.wav"
    audio = read_audio(longest)
    samples = audio.samples.copy()
    quiet = slice(len(samples) // 2, len(samples) // 2 + 3 * audio.sample_rate)
    samples[quiet] *= 0.0003  # a loose cable: 3 s of near-silence; the gate should say so
    events_file.parent.mkdir(parents=True, exist_ok=True)
    recording = events_file.with_suffix(".wav")
    sf.write(str(recording), samples, audio.sample_rate, subtype="FLOAT")

    class Printer(Sink):
        name = "print"

        def send(self, event: dict) -> None:  # type: ignore[type-arg]
            click.echo(event_line(event))

    source = FileSource(name=f"file:{recording}", path=recording, realtime=True, speed=20.0)
    config = DaemonConfig(bundle=bundle, source=source.name, hop_seconds=1.0, stream_name="demo")
    rate = audio.sample_rate
    click.echo(
        f"   {longest.name}: {len(samples) / rate:.1f} s at {rate} Hz, "
        f"silenced from {quiet.start / rate:.1f} s to {quiet.stop / rate:.1f} s"
    )
    daemon = Daemon(config, source=source, sinks=[Printer(), JsonLinesSink(events_file)])
    daemon.run()
    counts = daemon.counts()
    gated = sum(counts["gated_by_reason"].values())
    click.echo(
        f"   windows {counts.get('windows', 0)}: classified {counts.get('inferences', 0)}, gated {gated}, "
        f"dropped {counts.get('windows_dropped', 0)}; p50 latency {np.median(daemon.metrics.latencies) * 1000:.1f} ms"
    )
