"""Reading, checking and resampling audio files.

Stethoscope recordings arrive at 4, 8, 10 and 44.1 kHz, in 16-, 24- and 32-bit
PCM or float. Everything here returns float32 mono in [-1, 1] and fails with an
`AudioFileError` that names the file instead of a libsndfile message or a NaN
deep inside a model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from qlung_edge.errors import AudioFileError


@dataclass(frozen=True)
class AudioInfo:
    """What the header says, plus what the file really holds."""

    path: Path
    sample_rate: int
    frames: int
    """Frames that can actually be read (fewer than declared when truncated)."""
    channels: int
    subtype: str
    declared_frames: int | None = None
    """Frames the WAV header declares, where it declares a usable number."""

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @property
    def truncated(self) -> bool:
        return self.declared_frames is not None and self.frames < self.declared_frames


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray
    """float32, mono, nominally in [-1, 1]."""
    sample_rate: int
    info: AudioInfo
    downmixed: bool = False
    """True when the file had several channels and they were averaged."""


def _wav_declared_frames(path: Path, channels: int, subtype: str) -> int | None:
    """Frames the RIFF `data` chunk declares; None for non-WAV or streaming headers.

    libsndfile silently shortens a truncated WAV to what is there, so this is the
    only way to tell a cut-off recording from a short one.
    """
    bytes_per_sample = {"PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}.get(subtype)
    if bytes_per_sample is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if chunk_id == b"data":
                    if size in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                        return None
                    return size // (bytes_per_sample * channels)
                f.seek(size + (size & 1), 1)
    except OSError:
        return None


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts of an audio file, with truncation detected; reads no samples."""
    path = Path(path)
    if not path.exists():
        raise AudioFileError("file does not exist", path=path)
    if path.stat().st_size == 0:
        raise AudioFileError("file is empty (0 bytes)", path=path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(f"not a readable audio file ({err})", path=path) from err
    declared = _wav_declared_frames(path, info.channels, info.subtype)
    return AudioInfo(
        path=path,
        sample_rate=int(info.samplerate),
        frames=int(info.frames),
        channels=int(info.channels),
        subtype=str(info.subtype),
        declared_frames=declared,
    )


def read_audio(
    path: str | Path,
    *,
    allow_truncated: bool = True,
    allow_multichannel: bool = True,
) -> Audio:
    """Read a whole file as float32 mono.

    Several channels are averaged (`downmixed` says so); a truncated file yields
    the frames that are there unless `allow_truncated` is False. Empty files and
    files with NaN or inf raise.
    """
    info = audio_info(path)
    if info.truncated and not allow_truncated:
        raise AudioFileError(
            f"truncated: header declares {info.declared_frames} frames, file holds {info.frames}", path=info.path
        )
    if info.channels > 1 and not allow_multichannel:
        raise AudioFileError(f"has {info.channels} channels, expected mono", path=info.path)
    if info.frames == 0:
        raise AudioFileError("holds no audio samples", path=info.path)
    try:
        data, rate = sf.read(str(info.path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(f"cannot decode samples ({err})", path=info.path) from err
    if data.shape[0] == 0:
        raise AudioFileError("holds no audio samples", path=info.path)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioFileError(f"contains {bad} NaN or infinite samples", path=info.path)
    downmixed = data.shape[1] > 1
    samples = data.mean(axis=1, dtype=np.float32) if downmixed else data[:, 0]
    return Audio(samples=np.ascontiguousarray(samples), sample_rate=int(rate), info=info, downmixed=downmixed)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Whole-signal band-limited resampling (soxr, high quality), float32 out."""
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    samples = np.asarray(samples, dtype=np.float32)
    if rate_in == rate_out:
        return samples
    return soxr.resample(samples, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


def as_float32(samples: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1); float input is passed through as float32."""
    samples = np.asarray(samples)
    if np.issubdtype(samples.dtype, np.integer):
        scale = float(np.iinfo(samples.dtype).max) + 1.0
        return (samples.astype(np.float32) / scale).astype(np.float32)
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    raise TypeError(f"audio samples must be integer PCM or float, got {samples.dtype}")
