"""Does a window miss a crackle or wheeze because the sound is short in it, or because of what surrounds it?

The cycle level scores an annotated event cut at its edges and repeated to fill the input; the daemon scores 4 s
of breathing in which the event is a part. This scores every annotated crackle and wheeze of the validation and
the test patients (no longer than the input) with the run's best.pt, as five inputs of the same length:
repeated (the cycle level's input), in its recording (the input-long stretch centred on it, what the daemon
hears around it), once over normal breathing (laid once at the centre of a normal cycle drawn from the same
patients, repeated to fill the input, cross-faded), once over silence, and repeated over half the input (the
rest silent). Writes RUN/event_context.json, prints a line per split and class.
Usage: python scripts/event_context.py RUN [RUN ...]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from run_reports import own_and_abnormal, report_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONDITIONS = ("repeated", "in_recording", "once_over_normal", "once_over_silence", "repeated_over_half")
SEED = 0
"""Draw of the normal cycles the events are laid over."""


def centred_stretch(audio: np.ndarray, start: int, end: int, length: int) -> tuple[int, int]:
    """(first, last) sample of the `length`-long stretch of `audio` centred on [start, end), moved inside the
    recording at its edges (the whole recording when shorter)."""
    first = max(0, min((start + end) // 2 - length // 2, len(audio) - length))
    return first, min(first + length, len(audio))


def laid_once(event: np.ndarray, background: np.ndarray, fade: int) -> np.ndarray:
    """`event` once at the centre of `background`, cross-faded over `fade` samples at each edge."""
    if len(event) > len(background):
        raise ValueError(f"an event of {len(event)} samples does not fit an input of {len(background)}")
    from qlung_edge.windows import apply_edge_fades

    weight = apply_edge_fades(np.ones(len(event), np.float32), fade)
    first = (len(background) - len(event)) // 2
    out = np.array(background, np.float32, copy=True)
    stretch = slice(first, first + len(event))
    out[stretch] = out[stretch] * (1.0 - weight) + event * weight
    return out


def inputs_of(
    event: np.ndarray, around: np.ndarray, normal: np.ndarray, length: int, fade: int
) -> dict[str, np.ndarray]:
    """The five inputs of one event (`around`: its centred stretch of the recording; `normal`: a normal cycle)."""
    from qlung_edge.windows import pad_segment

    silence = np.zeros(length, np.float32)
    half = laid_once(pad_segment(event, length // 2), silence, fade)
    return {
        "repeated": pad_segment(event, length),
        "in_recording": around if len(around) == length else pad_segment(around, length),
        "once_over_normal": laid_once(event, pad_segment(normal, length), fade),
        "once_over_silence": laid_once(event, silence, fade),
        "repeated_over_half": half,
    }


@dataclass
class Called:
    """One patient group's crackle and wheeze events and the run's probabilities for each surrounding."""

    labels: np.ndarray
    probabilities: dict[str, np.ndarray]
    """Per condition, [events, classes]; empty where the patients hold no crackle or wheeze."""
    longer_than_input: int
    """Events left out: longer than the input, they cannot be laid once."""


def call_events(run: Path) -> dict[str, Called]:
    """The run's probabilities for every crackle and wheeze of the validation and the test patients, in each of
    the five surroundings."""
    import torch

    from qlung_edge import MODEL_SAMPLE_RATE
    from qlung_edge.batches import in_batches
    from qlung_edge.windows import FADE_SECONDS
    from training.cycles import CycleAudioLoader
    from training.engine import geometry_of, load_trained

    _, model, config, splits = load_trained(run / "best.pt", progress=False)
    model.eval()
    length = geometry_of(config, "window").samples
    fade = int(round(FADE_SECONDS * MODEL_SAMPLE_RATE))
    loader = CycleAudioLoader(splits.scan.recordings, cache_dir=config.data.cache_dir)

    @torch.no_grad()
    def probabilities(waves: np.ndarray) -> np.ndarray:
        """As training scored its examples: from the log-mel it caches (float16) when it caches."""
        x = torch.from_numpy(waves)
        if config.train.cache_features:
            x = model.frontend(x).half().float()
        return model(x)["probabilities"].numpy()

    def classify(waves: list[np.ndarray]) -> np.ndarray:
        if not waves:  # these patients hold no crackle or wheeze
            return np.zeros((0, len(model.classes)), np.float32)
        return in_batches(probabilities, np.stack(waves), 64)

    called = {}
    for split in ("validation", "test"):
        rng = np.random.default_rng(SEED)
        recordings = [r for r in splits.recordings[split] if r.audio_path is not None]
        normals = [c for r in recordings for c in r.cycles if c.label == 0]
        if not normals:
            raise SystemExit(f"{run}: the {split} patients have no normal cycle to lay events over")
        inputs: dict[str, list[np.ndarray]] = {k: [] for k in CONDITIONS}
        truth, too_long = [], 0
        for recording in recordings:
            audio = loader.recording_audio(recording.id)
            for cycle in recording.cycles:
                if cycle.label == 0:
                    continue
                event = loader.cycle_segment(cycle)
                if len(event) > length:
                    too_long += 1
                    continue
                start = int(round(cycle.start * MODEL_SAMPLE_RATE))
                first, last = centred_stretch(audio, start, start + len(event), length)
                normal = loader.cycle_segment(normals[int(rng.integers(len(normals)))])
                made = inputs_of(event, np.asarray(audio[first:last], np.float32), normal, length, fade)
                for k in CONDITIONS:
                    inputs[k].append(made[k])
                truth.append(cycle.label)
        called[split] = Called(np.array(truth, np.int64), {k: classify(inputs[k]) for k in CONDITIONS}, too_long)
    return called


def measure(run: Path) -> dict[str, Any]:
    from qlung_edge import CLASS_NAMES

    result: dict[str, Any] = {"run": str(run)}
    for split, c in call_events(run).items():
        result[split] = {
            "events": {CLASS_NAMES[k]: int(np.sum(c.labels == k)) for k in np.unique(c.labels)},
            "longer_than_input": c.longer_than_input,
            **{  # None where these patients hold no crackle or wheeze
                k: own_and_abnormal(c.labels, p.argmax(axis=1)) if len(c.labels) else None
                for k, p in c.probabilities.items()
            },
        }
    return result


def _describe(r: dict[str, Any]) -> list[str]:
    lines = []
    for split in ("validation", "test"):
        g = r[split]
        for name, count in g["events"].items():
            called = ", ".join(
                f"{k.replace('_', ' ')} {100 * g[k]['own_class_by_class'][name]:.1f} %" for k in CONDITIONS
            )
            lines.append(f"{split}, {count} {name} events called {name}: {called}")
    return lines


def main() -> None:
    report_runs(__doc__, "event_context.json", measure, _describe)


if __name__ == "__main__":
    main()
