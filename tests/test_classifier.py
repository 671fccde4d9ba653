"""`Classifier`, `qlung-edge predict` and the shipped model: one call from Python or the shell, and the same
answers the daemon and eval-stream give for the same file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from qlung_edge import Classifier
from qlung_edge.bundle import BundleError, load_bundle
from qlung_edge.classifier import SHIPPED_BUNDLE
from qlung_edge.daemon import Daemon, DaemonConfig
from qlung_edge.errors import AudioFileError
from qlung_edge.evalstream import eval_stream
from qlung_edge.events import SCHEMA_VERSION, Header, event_dict, validate
from qlung_edge.sinks import CollectSink


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    with Classifier.from_bundle() as loaded:
        yield loaded


def _sprsound_test_wavs(shared_data: Path, count: int) -> list[Path]:
    from training.datasets import scan_folder

    scan = scan_folder(shared_data / "sprsound")
    return [Path(str(r.audio_path)) for r in scan.recordings_in("test")[:count]]


def _windows(events: list[dict]) -> list[tuple]:
    return [
        (e["window"]["index"], e["status"], e.get("reasons"), (e.get("prediction") or {}).get("probabilities"))
        for e in events
        if e["type"] == "window"
    ]


def test_predict_the_daemon_and_eval_stream_give_the_same_answers(classifier: Classifier, shared_data: Path) -> None:
    wavs = _sprsound_test_wavs(shared_data, 3)
    report = eval_stream(SHIPPED_BUNDLE, shared_data / "sprsound", limit=3, progress=False)
    assert report["recordings_with_several_examinations"] == 0  # eval-stream scores one verdict per recording
    for wav, scored in zip(wavs, report["verdicts"]):
        result = classifier.predict(wav)
        predicted = result.to_dict()
        for event in predicted["windows"] + predicted["verdicts"]:
            validate(event)
        sink = CollectSink()
        assert Daemon(DaemonConfig(bundle=SHIPPED_BUNDLE, source=f"file:{wav}", sinks=[]), sinks=[sink]).run() == 0
        assert _windows(sink.events) == _windows(predicted["windows"]) and predicted["windows"]
        daemon_verdicts = [e for e in sink.events if e["type"] == "verdict"]
        assert [(v["task_2_2"], v["reason"]) for v in daemon_verdicts] == [
            (v.task_2_2, v.reason) for v in result.verdicts
        ]
        assert result.verdict is not None and scored["recording"] in wav.name
        assert (result.verdict.task_2_2, result.verdict.task_2_1) == (scored["task_2_2"], scored["task_2_1"])


def test_a_stream_pushed_in_odd_blocks_gives_the_file_s_answer(classifier: Classifier, shared_data: Path) -> None:
    wav = shared_data / "icbhi-sample" / "101_1b1_Al_sc_Meditron.wav"
    whole = classifier.predict(wav)
    samples, rate = sf.read(wav, dtype="float32")
    stream = classifier.stream("odd blocks")
    rng = np.random.default_rng(0)
    events, at = [], 0
    while at < len(samples):
        size = int(rng.integers(1, 9000))
        events += stream.push(samples[at : at + size], rate)
        at += size
    events += stream.finish()
    windows = [e for e in events if e.type == "window"]
    assert [(w.window.index, w.status) for w in windows] == [(w.window.index, w.status) for w in whole.windows]
    for mine, theirs in zip(windows, whole.windows):
        if mine.prediction is not None:
            assert theirs.prediction is not None
            for c in classifier.classes:
                assert mine.prediction.probabilities[c] == pytest.approx(theirs.prediction.probabilities[c], abs=2e-3)
    assert [e.type for e in events if e.type != "window"] == ["exam", "verdict"]
    from_samples = classifier.predict(samples, rate=rate)
    assert [w.status for w in from_samples.windows] == [w.status for w in whole.windows]
    assert from_samples.verdict is not None and whole.verdict is not None
    assert from_samples.verdict.task_2_2 == whole.verdict.task_2_2


def test_bad_input_is_named_and_refused(classifier: Classifier, tmp_path: Path) -> None:
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(AudioFileError, match=r"notes\.wav"):
        classifier.predict(text)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(2000, np.float32), 4000)
    with pytest.raises(AudioFileError, match=r"short.wav.*0.50 s of audio: too short"):
        classifier.predict(short)
    with pytest.raises(ValueError, match="sample rate"):
        classifier.predict(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="mono"):
        classifier.stream().push(np.zeros((2, 100)), 16000)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qlung_edge.cli", *args], capture_output=True, text=True, timeout=300)


def test_predict_command_prints_verdicts_json_and_clear_errors(shared_data: Path, tmp_path: Path) -> None:
    wav = shared_data / "icbhi-sample" / "101_1b1_Al_sc_Meditron.wav"
    done = _cli("predict", str(wav), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["source"] == str(wav) and result["windows"] and result["verdict"]["task_2_1"]
    for event in [result["verdict"], *result["windows"]]:
        validate(event)
    assert result["quality"]["windows"] == len(result["windows"])
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _cli("predict", str(empty))
    assert done.returncode == 2 and "no audio files" in done.stderr and str(empty) in done.stderr
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00")
    done = _cli("predict", str(broken), str(wav))  # one bad file does not stop the others
    assert done.returncode == 2 and "broken.wav" in done.stderr and "1 of 2 files" in done.stderr
    assert str(wav) in done.stdout and "windows" in done.stdout


def test_without_the_shipped_model_the_error_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("qlung_edge.classifier.SHIPPED_BUNDLE", tmp_path / "gone")
    with pytest.raises(BundleError, match="shipped model is missing"):
        Classifier.from_bundle()


def test_the_shipped_model_verifies_and_its_card_matches_its_manifest() -> None:
    bundle = load_bundle(SHIPPED_BUNDLE)
    card = (SHIPPED_BUNDLE / "MODEL_CARD.md").read_text()
    assert "not a medical device" in card.lower() and "CC BY 4.0" in card
    assert bundle.has("MODEL_CARD.md")
    from export.model_card import render_card

    assert card == render_card(bundle.manifest)
    script = (Path(__file__).resolve().parents[1] / "scripts" / "ship-model.sh").read_text()
    choice = re.search(r'--model-choice "(.*?)"', script, re.S)
    assert choice, "scripts/ship-model.sh must say how the shipped model was chosen"
    assert bundle.manifest["model_choice"] == choice.group(1).replace("\\\n", "")
    assert f"How this model was chosen: {bundle.manifest['model_choice']}" in card
    sizes = sum(record["bytes"] for record in bundle.manifest["files"].values())
    assert sizes < 8e6, f"the shipped bundle is {sizes / 1e6:.1f} MB"


def test_samples_far_beyond_full_scale_become_a_gap_never_a_lost_event(classifier: Classifier) -> None:
    """A FLOAT32 device frame of 1e20 used to make AQS NaN (the event then failed to encode), and 3e38 became
    inf in the resampler and ended the stream."""
    rng = np.random.default_rng(1)
    stream = classifier.stream("broken device")
    events = []
    for i in range(30):
        block = (0.05 * rng.standard_normal(4000)).astype(np.float32)
        if i == 10:
            block[100:140] = 1e20
        if i == 14:
            block[5] = 3e38
        events += stream.push(block, 8000)
    events += stream.finish()
    windows = [e for e in events if e.type == "window"]
    assert len(windows) >= 10 and windows[-1].window.end >= 14.0, "the stream went on"
    for event in events:  # every event encodes as strict JSON and fits the schema
        body = event_dict(Header(SCHEMA_VERSION, event.type, "t", "r", 0, "2026-01-01T00:00:00Z"), event)
        json.dumps(body, allow_nan=False)
        validate(body)
    assert any(w.reasons and "device_gap" in w.reasons for w in windows)
    assert len(stream.notes) == 2 and all("out-of-range" in note for note in stream.notes)
