"""How the Audio Quality Score and the gate see a data set, and gate thresholds chosen from it.

For each recording: read, resample to 16 kHz, score the whole recording. Where records carry SPRSound's
"Poor Quality" label, report how well the score and each gate reason separate those records (AUROC), and
plot the score's distribution. Thresholds are only ever chosen on a training split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qlung_edge.audio import read_audio, resample
from qlung_edge.errors import AudioFileError
from qlung_edge.quality import REASONS, QualityConfig, QualityReport, frame_features, rejudge, summarize
from training.metrics import auroc
from training.records import Recording
from training.sprsound import POOR_QUALITY


@dataclass(frozen=True)
class RecordingQuality:
    recording: str
    split: str | None
    record_label: str | None
    report: QualityReport

    @property
    def poor(self) -> bool:
        return self.record_label == POOR_QUALITY


def score_recordings(
    recordings: Iterable[Recording],
    config: QualityConfig | None = None,
    progress: bool = True,
    skipped: list[str] | None = None,
) -> list[RecordingQuality]:
    """AQS of each recording. A recording whose audio cannot be used (unreadable, NaN) raises, or, with a
    `skipped` list, is named there with its problem and the scan goes on."""
    config = config or QualityConfig()
    out = []
    for rec in tqdm(list(recordings), desc="quality", unit="rec", disable=not progress):
        if rec.audio_path is None:
            raise AudioFileError("recording was scanned without audio", path=rec.annotation_path)
        try:
            audio = read_audio(rec.audio_path)
        except AudioFileError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            continue
        samples = resample(audio.samples, audio.sample_rate, config.sample_rate)
        report = summarize(frame_features(samples, config), config)
        out.append(RecordingQuality(rec.id, rec.split, rec.record_label, report))
    return out


def rescore(rows: list[RecordingQuality], config: QualityConfig) -> list[RecordingQuality]:
    """Score and reasons under another config, from the stored summary numbers (no audio)."""
    return [dataclasses.replace(row, report=rejudge(row.report, config)) for row in rows]


def separation(rows: list[RecordingQuality]) -> dict[str, Any]:
    """AUROC of each measure for telling "Poor Quality" records apart (higher = flags poor ones)."""
    poor = np.array([r.poor for r in rows])
    if poor.all() or not poor.any():
        return {}
    measures = {
        "1 - AQS": [1.0 - r.report.aqs for r in rows],
        "entropy": [r.report.entropy for r in rows],
        "quietness (-dBFS)": [-r.report.rms_dbfs for r in rows],
        "clipped fraction": [r.report.clipped_fraction for r in rows],
        "dropout seconds": [r.report.dropout_seconds for r in rows],
    }
    result: dict[str, Any] = {"records": len(rows), "poor_quality": int(poor.sum())}
    result["auroc"] = {name: auroc(values, poor) for name, values in measures.items()}
    gated = {reason: np.array([reason in r.report.reasons for r in rows]) for reason in REASONS}
    result["gate"] = {
        reason: {
            "auroc": auroc(flags.astype(float), poor),
            "gated_poor": int(flags[poor].sum()),
            "gated_other": int(flags[~poor].sum()),
        }
        for reason, flags in gated.items()
    }
    any_reason = np.array([bool(r.report.reasons) for r in rows])
    result["gate"]["any"] = {
        "auroc": auroc(any_reason.astype(float), poor),
        "gated_poor": int(any_reason[poor].sum()),
        "gated_other": int(any_reason[~poor].sum()),
    }
    return result


def calibrate(
    rows: list[RecordingQuality], base: QualityConfig | None = None, false_gate: float = 0.01
) -> QualityConfig:
    """Level mapping and gate thresholds from training recordings that are not labelled poor.

    R_norm spans the 1st to 99th percentile of their levels, so it neither saturates nor sits at zero on
    the audio the model will see. Each gate threshold lets through all but `false_gate` of them, so the gate
    refuses at most about that share of acceptable audio per reason. Noise-like stays where `base` has it: an
    entropy threshold learnt from band-limited recordings would refuse every wideband one.
    """
    base = base or QualityConfig()
    good = [r.report for r in rows if not r.poor]
    if len(good) < 10:
        raise ValueError(f"need at least 10 acceptable recordings to calibrate, got {len(good)}")
    levels = np.array([r.rms_dbfs for r in good])
    q = 100.0 * false_gate
    return dataclasses.replace(
        base,
        rms_floor_dbfs=float(np.floor(np.percentile(levels, 1))),
        rms_ceil_dbfs=float(np.ceil(np.percentile(levels, 99))),
        quiet_dbfs=float(np.floor(np.percentile(levels, q))),
        max_clipped_fraction=max(float(np.percentile([r.clipped_fraction for r in good], 100 - q)), 0.001),
        max_dropout_seconds=max(float(np.percentile([r.dropout_seconds for r in good], 100 - q)), 0.1),
    )


def calibrate_aqs(
    recordings: list[Recording], base: QualityConfig | None = None, false_gate: float = 0.01, progress: bool = True
) -> tuple[QualityConfig, list[RecordingQuality]]:
    """The calibrated AQS of `recordings` (a training split): entropy over the band the devices record
    (Nyquist of the lowest source rate), mapped through the 1st-99th percentiles of acceptable records'
    entropies, the level mapping and gate thresholds as `calibrate` chooses them. The formula and its alpha,
    beta stay the paper's; only their inputs are normalised. Returns the config and the rows scored under it."""
    base = base or QualityConfig()
    rates = [r.sample_rate for r in recordings if r.sample_rate]
    band = min(base.sample_rate / 2, min(rates) / 2) if rates else 0.0
    banded = dataclasses.replace(base, entropy_band_hz=float(band))
    rows = score_recordings(recordings, banded, progress=progress)
    good = np.array([r.report.entropy for r in rows if not r.poor])
    if len(good) < 10:
        raise ValueError(f"need at least 10 acceptable recordings to calibrate, got {len(good)}")
    floor, ceil = (float(np.round(v, 4)) for v in np.percentile(good, [1, 99]))
    config = dataclasses.replace(
        calibrate(rows, banded, false_gate), entropy_floor=floor, entropy_ceil=max(ceil, floor + 1e-3)
    )
    return config, rescore(rows, config)


def plot_distribution(rows: list[RecordingQuality], path: str | Path, title: str = "") -> Path:
    """Histogram of AQS, records labelled "Poor Quality" apart from the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([r.report.aqs for r in rows])
    poor = np.array([r.poor for r in rows])
    bins = np.linspace(scores.min() - 1e-3, scores.max() + 1e-3, 30)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.hist(scores[~poor], bins=bins, alpha=0.7, density=True, label=f"other records ({int((~poor).sum())})")
    if poor.any():
        ax.hist(scores[poor], bins=bins, alpha=0.7, density=True, label=f"Poor Quality ({int(poor.sum())})")
    ax.set_xlabel("AQS")
    ax.set_ylabel("density")
    ax.set_title(title or "Audio Quality Score")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_refused_records(
    refused: list[tuple[Recording, float]], path: str | Path, title: str = "", seconds: float = 15.0
) -> Path:
    """Spectrograms of the recordings the gate refuses most (with the share it refuses): a person judges a
    gate by looking at, or listening to, what it throws away."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not refused:
        raise ValueError("no refused recordings to plot")
    fig, axes = plt.subplots(len(refused), 1, figsize=(9, 1.6 * len(refused) + 0.6), dpi=72, squeeze=False)
    for ax, (recording, share) in zip(axes[:, 0], refused):
        assert recording.audio_path is not None
        decoded = read_audio(recording.audio_path)
        rate = decoded.sample_rate
        audio = np.asarray(decoded.samples[: int(seconds * rate)], np.float64)
        level = 20 * np.log10(np.sqrt(np.mean(audio**2)) + 1e-12)
        ax.specgram(audio, NFFT=256, Fs=rate, noverlap=64, cmap="magma")
        ax.set_ylabel("Hz")
        label = recording.record_label or "unlabelled"
        ax.set_title(f"{recording.id} ({label}): {100 * share:.0f} % of windows refused, {level:.1f} dBFS", fontsize=9)
    axes[-1, 0].set_xlabel("s")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:  # 64 colours: a sheet of noise-like spectrograms is 3x smaller, alike to the eye
        quantized = image.convert("RGB").quantize(colors=64)
    quantized.save(path, optimize=True)
    return path


def format_separation(result: dict[str, Any]) -> str:
    if not result:
        return "  no 'Poor Quality' labels to compare against"
    lines = [f"  {result['poor_quality']} of {result['records']} records labelled Poor Quality", "  AUROC:"]
    lines += [f"    {name:<20}{value:.3f}" for name, value in result["auroc"].items()]
    lines.append("  gate reason           AUROC   gated poor   gated other")
    for reason, g in result["gate"].items():
        lines.append(f"    {reason:<18}{g['auroc']:>8.3f}{g['gated_poor']:>13}{g['gated_other']:>14}")
    return "\n".join(lines)
