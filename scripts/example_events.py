"""Print one real event of each type, from a real daemon run, for the README's event examples.

    python scripts/example_events.py BUNDLE [WAV]

Streams a real recording (default: the ICBHI sample beside the checkout) through `Daemon`, with a stretch of
NaN samples (a `source` note) and a bundle reload (a `reload` event), a quiet copy (gated windows), and a run
on a file whose samples turn to NaN (an `error` event from the source). Prints the first event of
each type as one JSON line; tests/test_readme.py checks that the README's examples fit the schema.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from firmware_bridge.sources import FileSource, open_source
from qlung_edge.audio import read_audio
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.sinks import CollectSink

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WAV = REPO.parent / "shared" / "data" / "icbhi-sample" / "104_1b1_Al_sc_Litt3200.wav"


def run(bundle: Path, source: object, reload: bool = False) -> list[dict]:
    sink = CollectSink()
    config = DaemonConfig(bundle=bundle, source="file:-", sinks=[], hop_seconds=1.0, stream_name="bed12")
    daemon = Daemon(config, source=source, sinks=[sink])
    if reload:  # what SIGHUP does: the bundle is loaded again before the next batch, the audio goes on; asked
        daemon.reload()  # before the run (a timer lost the race with a stream that ends in 40 ms)
    daemon.run()
    return sink.events


def main() -> int:
    bundle = Path(sys.argv[1])
    wav = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_WAV
    audio = read_audio(wav)
    x = np.resize(audio.samples, audio.sample_rate * 20).astype("<f4")
    x[audio.sample_rate * 10 : audio.sample_rate * 10 + 40] = np.nan
    with tempfile.TemporaryDirectory() as tmp:
        stdin = open_source("stdin:", rate=audio.sample_rate, format="f32le", stream=io.BytesIO(x.tobytes()))
        events = run(bundle, stdin, reload=True)
        gated = np.resize(audio.samples, audio.sample_rate * 12) * 0.0003  # a loose chest piece: too quiet
        quiet = Path(tmp) / "quiet.wav"
        sf.write(quiet, gated, audio.sample_rate, subtype="FLOAT")
        events += run(bundle, FileSource(name=f"file:{wav.name}", path=quiet))
        broken = Path(tmp) / "broken.wav"
        y = np.resize(audio.samples, audio.sample_rate * 12).astype(np.float32)
        y[-100:] = np.nan
        sf.write(broken, y, audio.sample_rate, subtype="FLOAT")
        events += run(bundle, FileSource(name="file:broken.wav", path=broken))
    seen: dict[str, dict] = {}
    for event in events:
        key = event["type"] if event["type"] != "window" else f"window/{event['status']}"
        seen.setdefault(key, event)
    for event in seen.values():
        print(json.dumps(event, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
