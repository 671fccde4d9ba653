"""Synthetic stethoscope recordings with known ground truth, in the ICBHI and SPRSound layouts.

Each recording is first drawn as a `RecordingSpec` (its ground truth: cycles,
every crackle and wheeze, the device, each degradation and its severity) and
then rendered from that spec alone, so any recording can be re-rendered, with
or without its degradations, to check what was written.

The acoustics are simplified but physiologically motivated:
- breath sounds: band-limited noise (energy mostly 100-1000 Hz, falling above
  200 Hz) under an inspiration/expiration envelope, cycles of 2-5 s;
- heart sounds: S1/S2 thumps below 150 Hz at 60-110 beats a minute;
- crackles: damped transients shorter than 20 ms, in bursts, fine ones (short,
  high) late in inspiration, coarse ones (longer, lower) early in inspiration
  and in expiration;
- wheezes: tonal sounds of 100-1000 Hz lasting 80 ms or more, with harmonics
  and a frequency drift, mostly expiratory;
- devices band-limit and resample (4, 8, 10, 44.1 and 48 kHz) and add self-noise;
- degradations of set severity: ambient noise at an SNR, friction bursts,
  clipping, very low gain, mains hum, dropouts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from qlung_edge.audio import resample

BASE_RATE = 16_000
"""Rate at which the clean sound is synthesised, before a device resamples it."""
NOMINAL_RMS_DBFS = -26.0
"""Level of a clean recording at unit device gain."""
BREATH_LEVEL = 0.35
"""Standard deviation of breath noise at the envelope's peak; other sounds are scaled to it."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    sample_rate: int
    band: tuple[float, float]
    """Pass band of the chest piece and its electronics, Hz."""
    subtype: str
    gain_db: float = 0.0
    noise_floor_dbfs: float = -80.0
    """Self-noise of the device, white, RMS in dB re full scale."""


DEVICES: dict[str, DeviceProfile] = {
    d.name: d
    for d in (
        DeviceProfile("Meditron", 44_100, (60.0, 2_000.0), "PCM_32", 0.0, -84.0),
        DeviceProfile("LittC2SE", 44_100, (40.0, 1_500.0), "PCM_24", -4.0, -82.0),
        DeviceProfile("Litt3200", 4_000, (20.0, 1_800.0), "PCM_16", 2.0, -78.0),
        DeviceProfile("AKGC417L", 10_000, (80.0, 4_000.0), "PCM_16", -2.0, -76.0),
        DeviceProfile("Yunting-II", 8_000, (50.0, 3_000.0), "PCM_16", 0.0, -74.0),
        # Out-of-distribution devices for held-out evaluation.
        DeviceProfile("WideBand48k", 48_000, (20.0, 5_000.0), "PCM_24", 4.0, -70.0),
        DeviceProfile("NarrowBand8k", 8_000, (150.0, 900.0), "PCM_16", -6.0, -66.0),
    )
}

ICBHI_LOCATIONS = ("Tc", "Al", "Ar", "Pl", "Pr", "Ll", "Lr")
SPRSOUND_LOCATIONS = ("p1", "p2", "p3", "p4")

PATIENT_CONDITIONS: dict[str, tuple[float, tuple[float, float, float, float]]] = {
    # condition: (share of patients, class probabilities normal/crackle/wheeze/both of its cycles)
    "healthy": (0.45, (0.99, 0.005, 0.005, 0.00)),
    "crackles": (0.30, (0.25, 0.60, 0.05, 0.10)),
    "wheezes": (0.15, (0.35, 0.10, 0.50, 0.05)),
    "mixed": (0.10, (0.20, 0.30, 0.20, 0.30)),
}
"""Together about 59 % normal, 22 % crackle, 11 % wheeze, 8 % both (ICBHI training: 50/29/12/9),
with healthy patients whose recordings are all normal, as SPRSound's mostly are."""

DEGRADATION_KINDS = ("noise", "friction", "clipping", "low_gain", "hum", "dropout")


@dataclass(frozen=True)
class SynthConfig:
    recordings: int = 120
    seed: int = 0
    devices: tuple[str, ...] = ("Meditron", "LittC2SE", "Litt3200", "AKGC417L")
    """Devices of the ICBHI layout, one per patient."""
    sprsound_devices: tuple[str, ...] = ("Yunting-II",)
    recording_seconds: tuple[float, float] = (8.0, 20.0)
    recordings_per_patient: tuple[int, int] = (1, 4)
    degraded_fraction: float = 0.3
    test_fraction: float = 0.4
    """Share of patients in the test split (ICBHI's official split is about 60/40)."""

    @classmethod
    def out_of_distribution(cls, recordings: int = 120, seed: int = 1) -> SynthConfig:
        """Other devices and more, harsher degradations: a held-out world to test against."""
        other = ("WideBand48k", "NarrowBand8k")
        return cls(recordings=recordings, seed=seed, devices=other, sprsound_devices=other, degraded_fraction=0.6)


@dataclass
class Wheeze:
    start: float
    end: float
    f0_start: float
    f0_end: float
    level: float
    """Peak amplitude relative to the breath envelope peak."""


@dataclass
class CycleTruth:
    start: float
    end: float
    label: int
    inspiration_end: float
    crackle_kind: str | None = None
    crackles: list[float] = field(default_factory=list)
    """Onset times of each crackle, seconds from the start of the recording."""
    wheezes: list[Wheeze] = field(default_factory=list)


@dataclass
class Degradation:
    kind: str
    params: dict[str, object]


@dataclass
class RecordingSpec:
    name: str
    patient: str
    device: str
    location: str
    split: str
    duration: float
    seed: int
    heart_rate_bpm: float
    cycles: list[CycleTruth]
    degradations: list[Degradation] = field(default_factory=list)
    poor_quality: bool = False

    @property
    def rate(self) -> int:
        return DEVICES[self.device].sample_rate


# --------------------------------------------------------------------------- drawing specs


def _draw_cycles(
    rng: np.random.Generator, seconds: float, class_probs: tuple[float, ...]
) -> tuple[list[CycleTruth], float]:
    t = float(rng.uniform(0.0, 0.5))
    cycles: list[CycleTruth] = []
    while t < seconds or not cycles:
        length = float(rng.uniform(2.0, 5.0))
        insp = t + length * float(rng.uniform(0.35, 0.45))
        label = int(rng.choice(4, p=np.asarray(class_probs)))
        cycle = CycleTruth(start=round(t, 3), end=round(t + length, 3), label=label, inspiration_end=round(insp, 3))
        if label in (1, 3):
            cycle.crackle_kind = "fine" if rng.random() < 0.6 else "coarse"
            n = int(rng.integers(3, 13))
            if cycle.crackle_kind == "fine":  # late inspiratory
                times = rng.uniform(t + 0.4 * (insp - t), insp - 0.03, n)
            else:  # early inspiratory and expiratory
                times = np.concatenate(
                    [
                        rng.uniform(t + 0.05, t + 0.5 * (insp - t), n - n // 3),
                        rng.uniform(insp, insp + 0.5 * (t + length - insp), n // 3),
                    ]
                )
            cycle.crackles = sorted(round(float(x), 4) for x in times)
        if label in (2, 3):
            for _ in range(int(rng.integers(1, 3))):
                expiratory = rng.random() < 0.75
                lo, hi = (insp, t + length) if expiratory else (t, insp)
                dur = float(rng.uniform(0.15, max(0.16, 0.8 * (hi - lo))))
                start = float(rng.uniform(lo, max(lo, hi - dur)))
                f0 = float(rng.uniform(150.0, 800.0))
                cycle.wheezes.append(
                    Wheeze(
                        start=round(start, 4),
                        end=round(min(start + dur, hi), 4),
                        f0_start=round(f0, 2),
                        f0_end=round(f0 * float(rng.uniform(0.85, 1.15)), 2),
                        level=round(float(rng.uniform(0.8, 2.0)), 3),
                    )
                )
        cycles.append(cycle)
        t += length
    return cycles, round(t + float(rng.uniform(0.0, 0.5)), 3)


def _draw_degradation(rng: np.random.Generator, kind: str, duration: float) -> Degradation:
    if kind == "noise":
        return Degradation(
            kind, {"snr_db": round(float(rng.uniform(-5.0, 15.0)), 2), "color": str(rng.choice(["pink", "white"]))}
        )
    if kind == "friction":
        n = int(rng.integers(2, 9))
        starts = sorted(float(x) for x in rng.uniform(0.0, max(duration - 0.3, 0.1), n))
        return Degradation(
            kind,
            {
                "bursts": [[round(s, 3), round(s + float(rng.uniform(0.05, 0.3)), 3)] for s in starts],
                "level_db": round(float(rng.uniform(6.0, 20.0)), 2),
            },
        )
    if kind == "clipping":
        return Degradation(kind, {"clipped_fraction": round(float(rng.uniform(0.01, 0.1)), 4)})
    if kind == "low_gain":
        return Degradation(kind, {"gain_db": round(float(rng.uniform(-45.0, -25.0)), 2)})
    if kind == "hum":
        return Degradation(
            kind, {"mains_hz": float(rng.choice([50.0, 60.0])), "level_db": round(float(rng.uniform(-10.0, 10.0)), 2)}
        )
    if kind == "dropout":
        n = int(rng.integers(1, 5))
        starts = sorted(float(x) for x in rng.uniform(0.0, max(duration - 0.5, 0.1), n))
        return Degradation(
            kind, {"intervals": [[round(s, 3), round(s + float(rng.uniform(0.05, 0.5)), 3)] for s in starts]}
        )
    raise ValueError(f"unknown degradation kind {kind!r}")


def is_poor_quality(degradations: list[Degradation]) -> bool:
    """The rule that turns degradation severity into SPRSound's "Poor Quality" record label."""
    for d in degradations:
        p = d.params
        if d.kind == "noise" and float(p["snr_db"]) < 3.0:  # type: ignore[arg-type]
            return True
        if d.kind == "clipping" and float(p["clipped_fraction"]) > 0.04:  # type: ignore[arg-type]
            return True
        if d.kind == "low_gain" and float(p["gain_db"]) < -35.0:  # type: ignore[arg-type]
            return True
        if d.kind == "hum" and float(p["level_db"]) > 3.0:  # type: ignore[arg-type]
            return True
        if d.kind == "friction" and len(p["bursts"]) >= 5:  # type: ignore[arg-type]
            return True
        if d.kind == "dropout" and sum(e - s for s, e in p["intervals"]) > 0.6:  # type: ignore[union-attr]
            return True
    return False


def draw_specs(config: SynthConfig, layout: str) -> list[RecordingSpec]:
    """The ground truth of a whole data set, deterministic in (config, layout)."""
    if layout not in ("icbhi", "sprsound"):
        raise ValueError(f"unknown layout {layout!r}")
    root = np.random.SeedSequence([config.seed, 0 if layout == "icbhi" else 1])
    rng = np.random.default_rng(root)
    conditions = list(PATIENT_CONDITIONS)
    shares = np.array([PATIENT_CONDITIONS[c][0] for c in conditions])
    specs: list[RecordingSpec] = []
    patient_no = 0
    while len(specs) < config.recordings:
        patient_no += 1
        condition = conditions[int(rng.choice(len(conditions), p=shares / shares.sum()))]
        pool = config.devices if layout == "icbhi" else config.sprsound_devices
        device = pool[int(rng.integers(len(pool)))]
        split = "test" if rng.random() < config.test_fraction else "train"
        age, gender = round(float(rng.uniform(0.5, 16.0)), 1), int(rng.integers(2))
        patient = str(100 + patient_no) if layout == "icbhi" else str(40_000_000 + patient_no)
        for k in range(int(rng.integers(config.recordings_per_patient[0], config.recordings_per_patient[1] + 1))):
            if len(specs) >= config.recordings:
                break
            seed = int(rng.integers(2**31))
            rec_rng = np.random.default_rng(seed)
            seconds = float(rec_rng.uniform(*config.recording_seconds))
            cycles, duration = _draw_cycles(rec_rng, seconds, PATIENT_CONDITIONS[condition][1])
            degradations: list[Degradation] = []
            if rec_rng.random() < config.degraded_fraction:
                kinds = rec_rng.choice(DEGRADATION_KINDS, size=int(rec_rng.integers(1, 3)), replace=False)
                degradations = [_draw_degradation(rec_rng, str(kind), duration) for kind in kinds]
            if layout == "icbhi":
                location = ICBHI_LOCATIONS[int(rec_rng.integers(len(ICBHI_LOCATIONS)))]
                mode = "mc" if rec_rng.random() < 0.3 else "sc"
                name = f"{patient}_{k + 1}b{int(rec_rng.integers(1, 4))}_{location}_{mode}_{device}"
            else:
                location = SPRSOUND_LOCATIONS[k % len(SPRSOUND_LOCATIONS)]
                name = f"{patient}_{age}_{gender}_{location}_{1000 * patient_no + k}"
            specs.append(
                RecordingSpec(
                    name=name,
                    patient=patient,
                    device=device,
                    location=location,
                    split=split,
                    duration=duration,
                    seed=seed,
                    heart_rate_bpm=round(float(rec_rng.uniform(60.0, 110.0)), 1),
                    cycles=cycles,
                    degradations=degradations,
                    poor_quality=is_poor_quality(degradations),
                )
            )
    return specs


# --------------------------------------------------------------------------- rendering


def _shape_noise(noise: np.ndarray, rate: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter by a zero-phase gain curve; zero-padded to a power of two, where FFTs are fast."""
    size = 1 << max(int(len(noise) - 1).bit_length(), 1)
    spectrum = np.fft.rfft(noise, n=size)
    freqs = np.fft.rfftfreq(size, 1.0 / rate)
    return np.fft.irfft(spectrum * gain(freqs), n=size)[: len(noise)]


def band_limit(samples: np.ndarray, rate: int, low: float, high: float) -> np.ndarray:
    """Zero-phase band pass with smooth (raised-cosine) edges, in the frequency domain."""

    def gain(f: np.ndarray) -> np.ndarray:
        lo_edge = np.clip((f - 0.7 * low) / (0.6 * low + 1e-9), 0.0, 1.0)
        hi_edge = np.clip((1.15 * high - f) / (0.3 * high), 0.0, 1.0)
        return (0.5 - 0.5 * np.cos(np.pi * lo_edge)) * (0.5 - 0.5 * np.cos(np.pi * hi_edge))

    return _shape_noise(samples, rate, gain)


def _breath_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    def gain(f: np.ndarray) -> np.ndarray:
        rise = np.clip(f / 100.0, 0.0, 1.0) ** 2
        fall = 1.0 / (1.0 + (f / 200.0) ** 2)  # -12 dB/octave above 200 Hz
        return rise * np.sqrt(fall)

    x = _shape_noise(rng.standard_normal(n), BASE_RATE, gain)
    return x / (np.std(x) + 1e-12)


def _add_bell(env: np.ndarray, start: float, end: float, height: float) -> None:
    """Add a smooth hump that is 0 outside [start, end] and `height` in the middle."""
    i0, i1 = int(start * BASE_RATE), min(int(np.ceil(end * BASE_RATE)), len(env))
    u = (np.arange(i0, i1) / BASE_RATE - start) / max(end - start, 1e-6)
    env[i0:i1] += height * np.sin(np.pi * np.clip(u, 0.0, 1.0)) ** 2


def _breath_envelope(n: int, cycles: list[CycleTruth]) -> np.ndarray:
    env = np.zeros(n)
    for c in cycles:
        _add_bell(env, c.start, c.inspiration_end, 1.0)
        _add_bell(env, c.inspiration_end, c.end, 0.55)
    return env


def _add_heart(out: np.ndarray, rng: np.random.Generator, bpm: float) -> None:
    period = 60.0 / bpm
    t0 = float(rng.uniform(0.0, period))
    k = np.arange(int(0.06 * BASE_RATE)) / BASE_RATE
    for offset, freq, amp in ((0.0, 55.0, 0.5 * BREATH_LEVEL), (0.3 * period, 70.0, 0.35 * BREATH_LEVEL)):
        thump = amp * np.exp(-k / 0.012) * np.sin(2 * np.pi * freq * k)
        for beat in np.arange(t0 + offset, len(out) / BASE_RATE, period):
            i = int(beat * BASE_RATE)
            seg = out[i : i + len(thump)]
            seg += thump[: len(seg)]


def crackle_waveform(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One crackle: a sharp deflection ringing down, < 10 ms (fine) or < 20 ms (coarse)."""
    length, freq, tau = (
        (0.010, rng.uniform(350.0, 800.0), 0.0015) if kind == "fine" else (0.020, rng.uniform(120.0, 300.0), 0.004)
    )
    k = np.arange(int(length * BASE_RATE)) / BASE_RATE
    return np.exp(-k / tau) * np.sin(2 * np.pi * freq * k + 0.3)


def _add_adventitious(out: np.ndarray, env: np.ndarray, rng: np.random.Generator, cycles: list[CycleTruth]) -> None:
    n = len(out)
    for c in cycles:
        for onset in c.crackles:
            i = int(onset * BASE_RATE)
            level = BREATH_LEVEL * float(rng.uniform(4.0, 10.0)) * max(env[min(i, n - 1)], 0.3)
            wave = level * crackle_waveform(c.crackle_kind or "fine", rng)
            seg = out[i : i + len(wave)]
            seg += wave[: len(seg)]
        for w in c.wheezes:
            i0, i1 = int(w.start * BASE_RATE), min(int(w.end * BASE_RATE), n)
            k = np.arange(i1 - i0) / BASE_RATE
            span = max(w.end - w.start, 1e-6)
            freq = w.f0_start + (w.f0_end - w.f0_start) * k / span + 0.01 * w.f0_start * np.sin(2 * np.pi * 5.0 * k)
            phase = 2 * np.pi * np.cumsum(freq) / BASE_RATE
            attack = np.clip(np.minimum(k, span - k) / 0.02, 0.0, 1.0)
            tone = np.sin(phase) + 0.4 * np.sin(2 * phase) + 0.15 * np.sin(3 * phase)
            out[i0:i1] += BREATH_LEVEL * w.level * attack * tone


def render_clean(spec: RecordingSpec) -> np.ndarray:
    """The recording as a perfect chest piece would hear it, at `BASE_RATE`, unit breath peak."""
    rng = np.random.default_rng(spec.seed)
    n = int(round(spec.duration * BASE_RATE))
    env = _breath_envelope(n, spec.cycles)
    out = BREATH_LEVEL * env * _breath_noise(rng, n)
    _add_heart(out, rng, spec.heart_rate_bpm)
    _add_adventitious(out, env, rng, spec.cycles)
    return out


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    return _shape_noise(rng.standard_normal(n), BASE_RATE, lambda f: 1.0 / np.sqrt(np.maximum(f, 20.0)))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) + 1e-12


def environment_noise(spec: RecordingSpec, clean: np.ndarray) -> np.ndarray:
    """Everything the room and the hand add, at `BASE_RATE`: ambient noise, friction, hum."""
    return added_noise(clean, BASE_RATE, spec.degradations, np.random.default_rng(spec.seed + 1))


def added_noise(clean: np.ndarray, rate: int, degradations: list[Degradation], rng: np.random.Generator) -> np.ndarray:
    """Ambient noise, friction and hum of `degradations`, scaled to `clean`, at `rate`."""
    n = len(clean)
    total = np.zeros(n)
    for d in degradations:
        p = d.params
        if d.kind == "noise":
            noise = _pink(rng, n) if p["color"] == "pink" else rng.standard_normal(n)
            total += noise * (_rms(clean) / _rms(noise)) * 10 ** (-float(p["snr_db"]) / 20)  # type: ignore[arg-type]
        elif d.kind == "friction":
            level = _rms(clean) * 10 ** (float(p["level_db"]) / 20)  # type: ignore[arg-type]
            for s, e in p["bursts"]:  # type: ignore[union-attr]
                i0, i1 = int(s * rate), min(int(e * rate), n)
                burst = np.diff(rng.standard_normal(i1 - i0 + 1))  # rubbing: tilted to high frequencies
                total[i0:i1] += level * burst / _rms(burst) * np.hanning(i1 - i0)
        elif d.kind == "hum":
            t = np.arange(n) / rate
            f = float(p["mains_hz"])  # type: ignore[arg-type]
            hum = np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 3 * f * t) + 0.25 * np.sin(2 * np.pi * 5 * f * t)
            total += hum * (_rms(clean) / _rms(hum)) * 10 ** (float(p["level_db"]) / 20)  # type: ignore[arg-type]
    return total


def render(spec: RecordingSpec) -> np.ndarray:
    """The recording as the device writes it: float samples at the device rate, in [-1, 1]."""
    device = DEVICES[spec.device]
    clean = render_clean(spec)
    heard = band_limit(clean, BASE_RATE, *device.band)
    signal = heard + band_limit(environment_noise(spec, clean), BASE_RATE, *device.band)
    signal = resample(signal.astype(np.float32), BASE_RATE, device.sample_rate).astype(np.float64)
    signal *= 10 ** ((NOMINAL_RMS_DBFS + device.gain_db) / 20) / _rms(heard)
    rng = np.random.default_rng(spec.seed + 2)
    signal += rng.standard_normal(len(signal)) * 10 ** (device.noise_floor_dbfs / 20)
    return device_faults(signal, device.sample_rate, spec.degradations)


def device_faults(signal: np.ndarray, rate: int, degradations: list[Degradation]) -> np.ndarray:
    """What the device itself does wrong in `degradations`: too little gain, clipping, dropouts."""
    signal = np.asarray(signal, dtype=np.float64).copy()
    by_kind = {d.kind: d.params for d in degradations}
    if "low_gain" in by_kind:
        signal *= 10 ** (float(by_kind["low_gain"]["gain_db"]) / 20)  # type: ignore[arg-type]
    if "clipping" in by_kind:
        level = float(np.quantile(np.abs(signal), 1.0 - float(by_kind["clipping"]["clipped_fraction"])))  # type: ignore[arg-type]
        signal = np.clip(signal / level, -1.0, 1.0)
    if "dropout" in by_kind:
        for s, e in by_kind["dropout"]["intervals"]:  # type: ignore[union-attr]
            signal[int(s * rate) : int(e * rate)] = 0.0
    return np.clip(signal, -1.0, 1.0).astype(np.float32)


DEGRADATION_KINDS = ("noise", "friction", "clipping", "low_gain", "hum", "dropout")


def degrade(
    samples: np.ndarray, rate: int, rng: np.random.Generator, poor: bool = True
) -> tuple[np.ndarray, Degradation]:
    """A real recording made worse by one degradation drawn as `synth` draws them; with `poor`, drawn until it
    is severe enough that the SPRSound layout would label the record "Poor Quality" (`is_poor_quality`)."""
    duration = len(samples) / rate
    while True:
        kind = str(rng.choice(DEGRADATION_KINDS))
        degradation = _draw_degradation(rng, kind, duration)
        if not poor or is_poor_quality([degradation]):
            break
    clean = np.asarray(samples, dtype=np.float64)
    noisy = clean + added_noise(clean, rate, [degradation], rng)
    return device_faults(noisy, rate, [degradation]), degradation


# --------------------------------------------------------------------------- writing layouts


def _spr_event_type(cycle: CycleTruth) -> str:
    if cycle.label == 0:
        return "Normal"
    if cycle.label == 2:
        return "Wheeze"
    if cycle.label == 3:
        return "Wheeze+Crackle"
    return "Fine Crackle" if cycle.crackle_kind == "fine" else "Coarse Crackle"


def _spr_record_label(spec: RecordingSpec) -> str:
    if spec.poor_quality:
        return "Poor Quality"
    labels = {c.label for c in spec.cycles}
    cas = bool(labels & {2, 3})
    das = bool(labels & {1, 3})
    return "CAS & DAS" if cas and das else "CAS" if cas else "DAS" if das else "Normal"


def _write_wav(path: Path, samples: np.ndarray, spec: RecordingSpec) -> None:
    device = DEVICES[spec.device]
    sf.write(str(path), samples, device.sample_rate, subtype=device.subtype, format="WAV")


def write_icbhi(out: Path, specs: list[RecordingSpec], progress: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for spec in tqdm(specs, desc="synth ICBHI", unit="rec", disable=not progress):
        _write_wav(out / f"{spec.name}.wav", render(spec), spec)
        lines = [f"{c.start:.3f}\t{c.end:.3f}\t{int(c.label in (1, 3))}\t{int(c.label in (2, 3))}" for c in spec.cycles]
        (out / f"{spec.name}.txt").write_text("\n".join(lines) + "\n")
    (out / "official_split.txt").write_text("".join(f"{s.name}\t{s.split}\n" for s in specs))
    diagnoses = {s.patient: ("Healthy" if all(c.label == 0 for c in s.cycles) else "COPD") for s in specs}
    (out / "patient_diagnosis.csv").write_text(
        "ID,CLASS\n" + "".join(f"{p},{d}\n" for p, d in sorted(diagnoses.items()))
    )


def write_sprsound(out: Path, specs: list[RecordingSpec], progress: bool = True) -> None:
    dirs = {
        "train": (out / "train_wav", out / "train_json"),
        "test": (out / "test_wav", out / "test_json" / "inter_test_json"),
    }
    for wav_dir, json_dir in dirs.values():
        wav_dir.mkdir(parents=True, exist_ok=True)
        json_dir.mkdir(parents=True, exist_ok=True)
    for spec in tqdm(specs, desc="synth SPRSound", unit="rec", disable=not progress):
        wav_dir, json_dir = dirs[spec.split]
        _write_wav(wav_dir / f"{spec.name}.wav", render(spec), spec)
        events = (
            []
            if spec.poor_quality
            else [
                {
                    "start": str(int(round(c.start * 1000))),
                    "end": str(int(round(c.end * 1000))),
                    "type": _spr_event_type(c),
                }
                for c in spec.cycles
            ]
        )
        doc = {"record_annotation": _spr_record_label(spec), "event_annotation": events}
        (json_dir / f"{spec.name}.json").write_text(json.dumps(doc))


def write_ground_truth(path: Path, config: SynthConfig, layout: str, specs: list[RecordingSpec]) -> None:
    doc = {
        "generator": "qlung-edge synth",
        "layout": layout,
        "config": asdict(config),
        "recordings": [asdict(s) for s in specs],
    }
    path.write_text(json.dumps(doc, indent=1))


def load_ground_truth(path: str | Path) -> list[RecordingSpec]:
    """Specs back from a ground_truth.json, so a recording can be re-rendered and checked."""
    doc = json.loads(Path(path).read_text())
    specs = []
    for r in doc["recordings"]:
        cycles = [CycleTruth(**{**c, "wheezes": [Wheeze(**w) for w in c["wheezes"]]}) for c in r["cycles"]]
        degradations = [Degradation(**d) for d in r["degradations"]]
        specs.append(RecordingSpec(**{**r, "cycles": cycles, "degradations": degradations}))
    return specs


def synthesize(
    out: str | Path,
    config: SynthConfig | None = None,
    layouts: tuple[str, ...] = ("icbhi", "sprsound"),
    progress: bool = True,
) -> dict[str, Path]:
    """Write each layout under `out/<layout>/` with a ground_truth.json; returns the folders."""
    config = config or SynthConfig()
    out = Path(out)
    written: dict[str, Path] = {}
    for layout in layouts:
        specs = draw_specs(config, layout)
        folder = out / layout
        (write_icbhi if layout == "icbhi" else write_sprsound)(folder, specs, progress)
        write_ground_truth(folder / "ground_truth.json", config, layout, specs)
        written[layout] = folder
    return written
