"""Data for the accuracy benchmark: an offline spoken-digit set made with espeak-ng, and a folder loader.

**Spoken digits** (:func:`spoken_digits`): the words "zero".."nine" synthesised by Debian's
``espeak-ng`` (a formant synthesiser: 8 English accents x ~100 voice variants), at random speeds and
pitches, resampled to ``sample_rate``, trimmed of leading/trailing silence, placed at a random offset
in a clip of ``seconds`` (cropped around the centre when longer) with white noise at a random SNR
(5-20 dB, relative to the word's RMS). **Train / validation / test are split by voice variant**
(disjoint variants; the accent is drawn per clip), so the test measures generalisation to voices
never heard in training. Everything is seeded: the same arguments give the same clips. The finished
set is cached as one ``.npz`` under ``~/.cache/lwvd_cuda/speech_digits/`` (``$LWVD_CACHE`` overrides
``~/.cache/lwvd_cuda``), never inside the repository.

If ``espeak-ng`` is missing the generator raises with the command that installs it
(``apt-get install -y espeak-ng``; ``make accuracy`` runs it). With ``synthetic_fallback=True`` (the
CI smoke test where espeak-ng cannot be installed) it instead makes a synthetic 10-class set of
harmonic "vowels" with class-specific formant tracks — same shapes, same code path downstream — and
says so in the returned ``description``.

**Folder of audio** (:func:`audio_folder`): ``root/<class>/*.{wav,flac,ogg,...}`` read with
``soundfile``, mixed to mono, resampled, centre-cropped or zero-padded to ``seconds``. If ``root``
has ``train/``, ``val/`` (or ``valid/``) and ``test/`` sub-folders (each with class folders), they
are the split; otherwise a seeded stratified 70/15/15 split by file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng's own (non-mbrola) English accents.
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
SPEED_WPM = (120, 220)
PITCH = (20, 80)
SNR_DB = (5.0, 20.0)
_CACHE_VERSION = 1


@dataclasses.dataclass
class Dataset:
    """Float32 waveforms ``(n, N)`` and int64 labels per split, the class names, and what it is."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple
    sample_rate: int
    description: str

    def sizes(self) -> str:
        return f"{len(self.y_train)} train / {len(self.y_val)} val / {len(self.y_test)} test"


def cache_dir() -> Path:
    root = Path(os.environ.get("LWVD_CACHE", Path.home() / ".cache" / "lwvd_cuda"))
    return root / "speech_digits"


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) along the last axis."""
    if from_rate == to_rate:
        return x.astype(np.float32)
    from scipy.signal import resample_poly

    r = Fraction(int(to_rate), int(from_rate))
    return resample_poly(x, r.numerator, r.denominator, axis=-1).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Centre-crop or zero-pad (equally both sides) to ``n`` samples."""
    if len(x) >= n:
        start = (len(x) - n) // 2
        return x[start : start + n]
    out = np.zeros(n, dtype=np.float32)
    start = (n - len(x)) // 2
    out[start : start + len(x)] = x
    return out


# --------------------------------------------------------------------------- espeak-ng digits

def espeak_variants() -> list:
    """Voice variant names (``espeak-ng --voices=variant``), sorted."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True).stdout
    names = []
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields and fields[-1].startswith("!v/"):
            names.append(fields[-1][3:])
        elif len(fields) >= 5 and fields[4].startswith("!v/"):
            names.append(fields[4][3:])
    return sorted(set(names))


def _synthesise(word: str, accent: str, variant: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    import soundfile

    wav = subprocess.run(
        ["espeak-ng", "-v", f"{accent}+{variant}", "-s", str(speed), "-p", str(pitch), "--stdout", word],
        check=True, capture_output=True,
    ).stdout
    x, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return (x if x.ndim == 1 else x.mean(axis=1)), rate


def _trim(x: np.ndarray, rel: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > rel * np.abs(x).max()) if x.size and np.abs(x).max() > 0 else []
    return x[idx[0] : idx[-1] + 1] if len(idx) else x


def _place(word: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """The word at a random offset in an ``n``-sample clip, white noise at a random SNR."""
    if len(word) > n:
        word = fit_length(word, n)
    clip = np.zeros(n, dtype=np.float32)
    start = int(rng.integers(0, n - len(word) + 1))
    clip[start : start + len(word)] = word
    rms = float(np.sqrt(np.mean(word.astype(np.float64) ** 2))) or 1.0
    snr = rng.uniform(*SNR_DB)
    clip += (rms * 10 ** (-snr / 20) * rng.standard_normal(n)).astype(np.float32)
    return clip


def install_hint() -> str:
    return "espeak-ng is not installed: run `apt-get install -y espeak-ng` (or `make accuracy`, which does)"


def spoken_digits(
    sample_rate: int = 8000,
    seconds: float = 1.0,
    voices: tuple = (24, 8, 12),
    renditions: int = 2,
    seed: int = 0,
    synthetic_fallback: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> Dataset:
    """The espeak-ng spoken-digit set; ``voices`` = variants in (train, val, test), ``renditions`` per voice and digit."""
    n = int(round(sample_rate * seconds))
    if shutil.which("espeak-ng") is None:
        if synthetic_fallback:
            return synthetic_digits(sample_rate, seconds, voices, renditions, seed)
        raise RuntimeError(install_hint())
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    key = json.dumps(dict(v=_CACHE_VERSION, sr=sample_rate, s=seconds, voices=list(voices), r=renditions, seed=seed, espeak=version))
    path = cache_dir() / f"digits_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"
    if path.exists():
        return _load_cached(path)

    variants = espeak_variants()
    if sum(voices) > len(variants):
        raise ValueError(f"voices: asked for {sum(voices)} voice variants, espeak-ng has {len(variants)}")
    rng = np.random.default_rng(seed)
    order = [variants[i] for i in rng.permutation(len(variants))]
    split_voices = (order[: voices[0]], order[voices[0] : voices[0] + voices[1]], order[voices[0] + voices[1] : sum(voices)])
    jobs = []  # (split, label, accent, variant, speed, pitch, clip seed)
    for split, names in enumerate(split_voices):
        for variant in names:
            for label in range(len(DIGITS)):
                for _ in range(renditions):
                    jobs.append((split, label, ACCENTS[int(rng.integers(len(ACCENTS)))], variant,
                                 int(rng.integers(SPEED_WPM[0], SPEED_WPM[1] + 1)),
                                 int(rng.integers(PITCH[0], PITCH[1] + 1)), int(rng.integers(2**31))))

    def make(job):
        split, label, accent, variant, speed, pitch, clip_seed = job
        x, rate = _synthesise(DIGITS[label], accent, variant, speed, pitch)
        word = _trim(resample(x, rate, sample_rate))
        return _place(word, n, np.random.default_rng(clip_seed))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="espeak-ng digits", unit="clip")
    clips = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for clip in pool.map(make, jobs):
            clips.append(clip)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    x = np.stack(clips).astype(np.float32)
    split = np.array([j[0] for j in jobs])
    y = np.array([j[1] for j in jobs], dtype=np.int64)
    description = (
        f"espeak-ng {_version_number(version)} spoken digits, "
        f"{sample_rate} Hz, {seconds:g} s clips, voice-disjoint split ({voices[0]}/{voices[1]}/{voices[2]} "
        f"variants), {renditions} renditions per voice and digit, speed {SPEED_WPM[0]}-{SPEED_WPM[1]} wpm, "
        f"pitch {PITCH[0]}-{PITCH[1]}, white noise {SNR_DB[0]:g}-{SNR_DB[1]:g} dB SNR, seed {seed}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y, split=split, sample_rate=sample_rate, description=description)
    os.replace(tmp, path)
    return _load_cached(path)


def _version_number(text: str) -> str:
    m = re.search(r"\d+\.\d+(\.\d+)?", text)
    return m.group(0) if m else "(unknown version)"


def _load_cached(path: Path) -> Dataset:
    d = np.load(path)
    x, y, split = d["x"], d["y"], d["split"]
    parts = [(x[split == s], y[split == s]) for s in range(3)]
    return Dataset(*parts[0], *parts[1], *parts[2], classes=DIGITS, sample_rate=int(d["sample_rate"]),
                   description=str(d["description"]) + f" (cache {path})")


def synthetic_digits(sample_rate: int, seconds: float, voices: tuple, renditions: int, seed: int) -> Dataset:
    """Stand-in when espeak-ng is unavailable: 10 classes of harmonic sounds with class-specific formant glides.

    A "voice" is a fundamental frequency and a formant scale; the split is by voice like the real set.
    """
    n = int(round(sample_rate * seconds))
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.4 * sample_rate)) / sample_rate
    nyq = sample_rate / 2
    out = {0: [], 1: [], 2: []}
    for split, count in enumerate(voices):
        for _ in range(count):
            f0, scale = rng.uniform(90, 250), rng.uniform(0.85, 1.15)
            for label in range(10):
                for _ in range(renditions):
                    f1a, f1b = 300 + 60 * label, 700 - 40 * label
                    f2a, f2b = 900 + 120 * (label % 5), 2200 - 150 * (label // 2)
                    frac = t / t[-1]
                    f1 = scale * (f1a + (f1b - f1a) * frac)
                    f2 = scale * (f2a + (f2b - f2a) * frac)
                    x = np.zeros_like(t)
                    for h in range(1, int(nyq * 0.9 / f0)):
                        fh = h * f0
                        gain = np.exp(-((fh - f1) ** 2) / (2 * 120.0**2)) + 0.6 * np.exp(-((fh - f2) ** 2) / (2 * 200.0**2))
                        x += gain * np.sin(2 * np.pi * fh * t + rng.uniform(0, 2 * np.pi))
                    x *= np.hanning(len(t))
                    out[split].append((_place(x.astype(np.float32), n, rng), label))
    parts = []
    for s in range(3):
        parts += [np.stack([c for c, _ in out[s]]).astype(np.float32), np.array([lab for _, lab in out[s]], dtype=np.int64)]
    return Dataset(*parts, classes=DIGITS, sample_rate=sample_rate,
                   description=f"SYNTHETIC stand-in for the spoken digits (espeak-ng missing): harmonic formant glides, {sample_rate} Hz")


# --------------------------------------------------------------------------- folder of audio

_AUDIO_EXT = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".au", ".mp3"}


def _read_class_folders(root: Path, sample_rate: int, n: int, classes: Optional[list] = None):
    import soundfile

    classes = classes or sorted(p.name for p in root.iterdir() if p.is_dir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in _AUDIO_EXT:
                x, rate = soundfile.read(str(f), dtype="float32", always_2d=True)
                xs.append(fit_length(resample(x.mean(axis=1), rate, sample_rate), n))
                ys.append(label)
    if not xs:
        raise ValueError(f"root: no audio files ({sorted(_AUDIO_EXT)}) in class sub-folders of {root}")
    return np.stack(xs), np.array(ys, dtype=np.int64), classes


def audio_folder(root, sample_rate: int = 8000, seconds: float = 1.0, seed: int = 0) -> Dataset:
    """``root/<class>/*`` (or ``root/{train,val,test}/<class>/*``) as a :class:`Dataset`."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root: {root} is not a directory")
    n = int(round(sample_rate * seconds))
    val_dir = next((root / v for v in ("val", "valid", "validation") if (root / v).is_dir()), None)
    if (root / "train").is_dir() and (root / "test").is_dir() and val_dir is not None:
        xtr, ytr, classes = _read_class_folders(root / "train", sample_rate, n)
        xva, yva, _ = _read_class_folders(val_dir, sample_rate, n, classes)
        xte, yte, _ = _read_class_folders(root / "test", sample_rate, n, classes)
        how = "given train/val/test folders"
    else:
        x, y, classes = _read_class_folders(root, sample_rate, n)
        rng = np.random.default_rng(seed)
        idx = {0: [], 1: [], 2: []}
        for label in range(len(classes)):
            members = rng.permutation(np.flatnonzero(y == label))
            n_val = n_test = max(1, int(math.floor(0.15 * len(members))))
            idx[1] += list(members[:n_val])
            idx[2] += list(members[n_val : n_val + n_test])
            idx[0] += list(members[n_val + n_test :])
        (xtr, ytr), (xva, yva), (xte, yte) = ((x[idx[s]], y[idx[s]]) for s in range(3))
        how = f"seeded stratified 70/15/15 split by file (seed {seed})"
    return Dataset(xtr, ytr, xva, yva, xte, yte, classes=tuple(classes), sample_rate=sample_rate,
                   description=f"audio folder {root} ({len(classes)} classes, {sample_rate} Hz, {seconds:g} s, {how})")
