"""How much concealed device silence a window can hold before the shipped model's answer changes.

    python scripts/gap_tolerance.py [SPRSOUND-FOLDER] [RECORDINGS]

Link frames (256 samples, as `simulate-device` sends them) are dropped at random at several rates from real
SPRSound test recordings and concealed as silence, as the link receiver does; each window's prediction is
compared with the clean recording's. Prints, for windows holding some silence up to each amount, how often the
predicted class stays the same: the daemon's `max_gap_seconds` default is the largest amount with at least
95 % agreement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from qlung_edge.audio import read_audio
from qlung_edge.classifier import Classifier

FRAME = 256
RATES = (0.002, 0.005, 0.01, 0.02, 0.05)
LIMITS = (0.035, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/sprsound") / "test_wav"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    files = sorted(folder.glob("*.wav"))[::7][:count]
    rng = np.random.default_rng(0)
    seen: list[tuple[float, bool]] = []  # (seconds of silence in the window, same class as clean)
    with Classifier.from_bundle() as classifier:
        bundle = classifier.bundle
        window, hop = bundle.window_samples / bundle.sample_rate, classifier.hop_seconds
        for path in files:
            audio = read_audio(path)
            clean = classifier.stream("clean")
            reference = {}
            for w in clean.push(audio.samples, audio.sample_rate) + clean.finish():
                if w.type == "window" and w.prediction is not None:
                    reference[w.window.index] = w.prediction.label
            for rate in RATES:
                dropped = audio.samples.copy()
                lost = np.zeros(len(dropped), bool)
                for start in range(0, len(dropped), FRAME):
                    if rng.random() < rate:
                        dropped[start : start + FRAME] = 0.0
                        lost[start : start + FRAME] = True
                stream = classifier.stream("dropped")
                for w in stream.push(dropped, audio.sample_rate) + stream.finish():
                    if w.type != "window" or w.prediction is None or w.window.index not in reference:
                        continue
                    a, b = round(w.window.start * audio.sample_rate), round(w.window.end * audio.sample_rate)
                    gap = lost[a:b].sum() / audio.sample_rate
                    if gap > 0:
                        seen.append((gap, w.prediction.label == reference[w.window.index]))
    print(f"{len(files)} recordings, {window:g} s windows every {hop:g} s, drop rates {RATES}")
    print("silence in window    windows   same class as without the losses")
    best = 0.0
    for limit in LIMITS:
        same = [ok for gap, ok in seen if gap <= limit]
        if same:
            share = float(np.mean(same))
            print(f"  > 0 and <= {limit:5.3f} s   {len(same):6d}     {100 * share:5.1f} %")
            if share >= 0.95:
                best = limit
    print(f"largest amount with >= 95 % agreement: {best:g} s")


if __name__ == "__main__":
    main()
