from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.icbhi import scan_icbhi
from training.sprsound import scan_sprsound
from training.synth import (
    BASE_RATE,
    DEVICES,
    NOMINAL_RMS_DBFS,
    CycleTruth,
    Degradation,
    SynthConfig,
    crackle_waveform,
    draw_specs,
    environment_noise,
    is_poor_quality,
    load_ground_truth,
    render,
    render_clean,
    synthesize,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    config = SynthConfig(recordings=6, seed=11)
    synthesize(tmp_path / "a", config, progress=False)
    synthesize(tmp_path / "b", config, progress=False)
    synthesize(tmp_path / "c", replace(config, seed=12), progress=False)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b and len(a) > 12
    assert a != c


def test_icbhi_layout_reads_back_as_its_ground_truth(synth_root: Path) -> None:
    root = synth_root / "icbhi"
    truth = {s.name: s for s in load_ground_truth(root / "ground_truth.json")}
    scan = scan_icbhi(root, progress=False)
    assert scan.problems == [] and len(scan.recordings) == len(truth) == 40
    for rec in scan.recordings:
        spec = truth[rec.id]
        device = DEVICES[spec.device]
        assert (rec.device, rec.split, rec.patient) == (spec.device, spec.split, spec.patient)
        assert rec.sample_rate == device.sample_rate and rec.extra["subtype"] == device.subtype
        assert rec.duration == pytest.approx(spec.duration, abs=1e-3)
        assert [(c.start, c.end, c.label) for c in rec.cycles] == [(c.start, c.end, c.label) for c in spec.cycles]
    assert {r.sample_rate for r in scan.recordings} >= {4000, 10000, 44100}
    assert all(2.0 <= c.end - c.start <= 5.0 for s in truth.values() for c in s.cycles)


def test_sprsound_layout_reads_back_as_its_ground_truth(synth_root: Path) -> None:
    root = synth_root / "sprsound"
    truth = {s.name: s for s in load_ground_truth(root / "ground_truth.json")}
    scan = scan_sprsound(root, progress=False)
    assert scan.problems == [] and len(scan.recordings) == 40
    for rec in scan.recordings:
        spec = truth[rec.id]
        assert rec.sample_rate == 8000 and rec.split == spec.split
        assert (rec.record_label == "Poor Quality") == spec.poor_quality == is_poor_quality(spec.degradations)
        expected = [] if spec.poor_quality else [(c.start, c.end, c.label) for c in spec.cycles]
        assert [(c.start, c.end, c.label) for c in rec.cycles] == expected
        doc = json.loads(rec.annotation_path.read_text())
        assert all(isinstance(e["start"], str) for e in doc["event_annotation"])  # as the real release writes them
    assert not {r.patient for r in scan.recordings_in("train")} & {r.patient for r in scan.recordings_in("test")}


def _spec_with(kind: str, params: dict[str, object]):  # type: ignore[no-untyped-def]
    spec = draw_specs(SynthConfig(recordings=3, seed=5, degraded_fraction=0.0), "icbhi")[0]
    return replace(spec, degradations=[Degradation(kind, params)])


def test_crackles_and_wheezes_sit_where_the_ground_truth_says() -> None:
    specs = draw_specs(SynthConfig(recordings=60, seed=2), "icbhi")
    checked_crackles = checked_wheezes = 0
    for spec in specs:
        if not any(c.crackles or c.wheezes for c in spec.cycles):
            continue
        bare = replace(spec, cycles=[replace(c, crackles=[], wheezes=[]) for c in spec.cycles])
        added = render_clean(spec) - render_clean(bare)
        covered = np.zeros(len(added), bool)
        for c in spec.cycles:
            for t in c.crackles:
                i = int(t * BASE_RATE)
                covered[i : i + int(0.02 * BASE_RATE)] = True
                assert np.abs(added[i : i + int(0.002 * BASE_RATE)]).max() > 0.05
                checked_crackles += 1
            for w in c.wheezes:
                i0, i1 = int(w.start * BASE_RATE), int(w.end * BASE_RATE)
                covered[i0:i1] = True
                seg = added[i0:i1]
                others = [o for o in c.wheezes if o is not w and o.start < w.end and w.start < o.end]
                only_wheeze = not others and not any(w.start <= t <= w.end for t in c.crackles)
                if only_wheeze and len(seg) > 0.1 * BASE_RATE:
                    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n=1 << 16))
                    peak = np.argmax(spectrum) * BASE_RATE / (1 << 16)
                    lo, hi = sorted((w.f0_start, w.f0_end))
                    assert lo - 15 <= peak <= hi + 15
                    checked_wheezes += 1
        assert np.abs(added[~covered]).max() < 1e-9  # nothing anywhere else
    assert checked_crackles > 50 and checked_wheezes > 5


def test_crackles_are_short_and_wheezes_long_enough() -> None:
    rng = np.random.default_rng(0)
    assert len(crackle_waveform("fine", rng)) <= 0.01 * BASE_RATE
    assert len(crackle_waveform("coarse", rng)) <= 0.02 * BASE_RATE
    specs = draw_specs(SynthConfig(recordings=100, seed=3), "icbhi")
    wheezes = [w for s in specs for c in s.cycles for w in c.wheezes]
    assert wheezes and all(w.end - w.start >= 0.08 and 100 <= w.f0_start <= 1000 for w in wheezes)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0])
def test_ambient_noise_is_at_the_stated_snr(snr_db: float) -> None:
    spec = _spec_with("noise", {"snr_db": snr_db, "color": "pink"})
    clean = render_clean(spec)
    noise = environment_noise(spec, clean)
    measured = 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_hum_is_at_its_level_and_frequency() -> None:
    spec = _spec_with("hum", {"mains_hz": 60.0, "level_db": 5.0})
    clean = render_clean(spec)
    hum = environment_noise(spec, clean)
    assert 10 * np.log10(np.mean(hum**2) / np.mean(clean**2)) == pytest.approx(5.0, abs=0.01)
    assert np.argmax(np.abs(np.fft.rfft(hum))) * BASE_RATE / len(hum) == pytest.approx(60.0, abs=0.2)


def test_clipping_dropout_and_low_gain_in_the_written_samples(tmp_path: Path) -> None:
    clipped = render(_spec_with("clipping", {"clipped_fraction": 0.05}))
    assert np.mean(np.abs(clipped) >= 0.9999) == pytest.approx(0.05, abs=0.005)

    spec = _spec_with("dropout", {"intervals": [[1.0, 1.3], [2.0, 2.05]]})
    rate = DEVICES[spec.device].sample_rate
    x = render(spec)
    assert np.all(x[rate : int(1.3 * rate)] == 0.0) and np.all(x[2 * rate : int(2.05 * rate)] == 0.0)
    assert np.mean(x[:rate] == 0.0) < 0.01
    path = tmp_path / "drop.wav"
    sf.write(path, x, rate, subtype=DEVICES[spec.device].subtype)
    assert np.all(sf.read(path)[0][rate : int(1.3 * rate)] == 0.0)

    quiet = _spec_with("low_gain", {"gain_db": -40.0})
    normal = replace(quiet, degradations=[])
    ratio = 20 * np.log10(np.std(render(quiet)) / np.std(render(normal)))
    assert ratio == pytest.approx(-40.0, abs=0.05)
    level = 20 * np.log10(np.std(render(normal)))
    assert level == pytest.approx(NOMINAL_RMS_DBFS + DEVICES[normal.device].gain_db, abs=0.5)


def test_devices_band_limit() -> None:
    spec = draw_specs(SynthConfig(recordings=1, seed=9, devices=("NarrowBand8k",), degraded_fraction=0.0), "icbhi")[0]
    x = render(spec)
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 8000)
    high = DEVICES["NarrowBand8k"].band[1]
    assert spectrum[freqs > 1.2 * high].sum() < 1e-3 * spectrum.sum()


def test_class_mix_and_degradations_over_a_large_draw() -> None:
    specs = draw_specs(SynthConfig(recordings=400, seed=0), "icbhi")
    counts = Counter(c.label for s in specs for c in s.cycles)
    total = sum(counts.values())
    shares = [counts[k] / total for k in range(4)]
    assert shares[0] == max(shares) and shares[3] == min(shares)  # imbalanced like ICBHI
    assert 0.45 < shares[0] < 0.7 and 0.12 < shares[1] < 0.35
    degraded = [s for s in specs if s.degradations]
    assert 0.2 < len(degraded) / len(specs) < 0.4
    assert {d.kind for s in degraded for d in s.degradations} == {
        "noise",
        "friction",
        "clipping",
        "low_gain",
        "hum",
        "dropout",
    }
    assert len({s.patient for s in specs}) < len(specs)  # several recordings per patient


def test_out_of_distribution_config_uses_other_devices() -> None:
    specs = draw_specs(SynthConfig.out_of_distribution(30), "sprsound")
    assert {s.device for s in specs} <= {"WideBand48k", "NarrowBand8k"}
    assert not {s.device for s in specs} & set(SynthConfig().devices)


def test_ground_truth_round_trips(synth_root: Path) -> None:
    specs = load_ground_truth(synth_root / "icbhi" / "ground_truth.json")
    assert isinstance(specs[0].cycles[0], CycleTruth)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, rate = sf.read(synth_root / "icbhi" / f"{specs[0].name}.wav", dtype="float32")
    y = render(specs[0])
    step = 2.0**-15 if DEVICES[specs[0].device].subtype == "PCM_16" else 2.0**-23
    assert rate == DEVICES[specs[0].device].sample_rate and np.max(np.abs(x - y)) <= step
