"""Benchmark registry: configurations, input builders and entries.

Every entry runs on the inputs that :func:`build_inputs` makes from a :class:`BenchConfig`
(the signal comes from ``lwvd_cuda.testing.make_signal``, the same factory the tests use), so all
rows of one table see the same signal and filters.

The standard configuration **S** (SPEC §3, ``PEERS.md``): ``B = 4`` signals of ``N = 16000`` samples
(1 s at 16 kHz), ``n_fft = 512``, ``hop = 160``, ``F = 80`` filters with HTK-mel-spaced centres over
``[0, 8000]`` Hz and the widths that make the layer a power spectrogram with a Gaussian window of
standard deviation ``s = 0.025 * 16000 / 6`` samples (a 25 ms window spanning +-3 std):
``sigma_t = s / sqrt(2)``, ``sigma_nu = 1 / (2 sqrt(2) pi s)``, ``rho = 0``. The tilted variant sets
``rho = +0.5, -0.5, +0.5, ...`` (alternating), which turns every ellipse and so changes the kernels'
work per filter.

An entry's ``prepare(cfg, inputs, device, dtype)`` returns a :class:`Prepared` whose ``fn()`` is
what is timed; construction work (building layers, windows, lag tensors' index arrays) stays out.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

import lwvd_cuda
from lwvd_cuda import reference, testing
from lwvd_cuda.modules import hz_to_mel, mel_to_hz

__all__ = [
    "BenchConfig",
    "Inputs",
    "Prepared",
    "Entry",
    "standard_config",
    "mel_centers",
    "build_inputs",
    "naive_lwvd",
    "lwvd_model_flops",
    "stft_agreement",
    "ENTRIES",
    "get_entries",
]


# --------------------------------------------------------------------------------------------
# Configurations and inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration (units: samples, Hz where named so)."""

    name: str
    batch: int = 4
    n: int = 16000
    n_fft: int = 512
    hop: int = 160
    n_filters: int = 80
    sample_rate: float = 16000.0
    window_seconds: float = 0.025
    f_min: float = 0.0
    f_max: float = 8000.0
    tilt: float = 0.0  # |rho|, alternating sign over the filters
    truncate: Optional[float] = 4.0
    seed: int = 0

    @property
    def window_std(self) -> float:
        """s: standard deviation in samples of the equivalent spectrogram's Gaussian window."""
        return self.window_seconds * self.sample_rate / 6.0

    @property
    def sigma_t(self) -> float:
        return self.window_std / math.sqrt(2.0)

    @property
    def sigma_nu(self) -> float:
        return 1.0 / (2.0 * math.sqrt(2.0) * math.pi * self.window_std)

    @property
    def frames(self) -> int:
        return reference.num_frames(self.n, self.hop)

    def label(self) -> str:
        rho = f", rho=+-{self.tilt:g}" if self.tilt else ""
        return f"{self.name}: B={self.batch}, N={self.n}, n_fft={self.n_fft}, hop={self.hop}, F={self.n_filters}{rho}"

    def with_size(self, batch: int, n: int, name: Optional[str] = None) -> "BenchConfig":
        return replace(self, batch=batch, n=n, name=name or f"B={batch},N={n}")


def standard_config(*, batch: int = 4, n: int = 16000, tilted: bool = False, n_filters: int = 80,
                    name: Optional[str] = None) -> BenchConfig:
    """Configuration S (or its tilted variant, rho = +-0.5 alternating), optionally resized."""
    default = "S_tilted" if tilted else "S"
    if (batch, n, n_filters) != (4, 16000, 80):
        default += f"(B={batch},N={n}" + (f",F={n_filters})" if n_filters != 80 else ")")
    return BenchConfig(name=name or default, batch=batch, n=n, n_filters=n_filters, tilt=0.5 if tilted else 0.0)


def mel_centers(n_filters: int, f_min: float, f_max: float, sample_rate: float) -> torch.Tensor:
    """HTK-mel-spaced centres in cycles/sample (float64), at the midpoints of ``n_filters`` equal
    mel cells of ``[f_min, f_max]`` - the grid of ``lwvd_cuda.LWVD(init="mel_window")``
    (``init="mel"`` shrinks it to keep every support inside the band), so no centre sits on 0 or
    on Nyquist."""
    lo, hi = hz_to_mel(f_min), hz_to_mel(f_max)
    u = (torch.arange(n_filters, dtype=torch.float64) + 0.5) / n_filters
    hz = torch.tensor([mel_to_hz(lo + (hi - lo) * x) for x in u.tolist()], dtype=torch.float64)
    return hz / sample_rate


def config_filters(cfg: BenchConfig) -> tuple[torch.Tensor, ...]:
    """(center, sigma_t, sigma_nu, rho), float64 ``(F,)``: mel centres, spectrogram widths, tilt."""
    centers = mel_centers(cfg.n_filters, cfg.f_min, cfg.f_max, cfg.sample_rate)
    center, sigma_t, sigma_nu, rho = testing.spectrogram_filters(centers, cfg.window_std)
    if cfg.tilt:
        sign = torch.where(torch.arange(cfg.n_filters) % 2 == 0, 1.0, -1.0).to(torch.float64)
        rho = cfg.tilt * sign
    return center, sigma_t, sigma_nu, rho


@dataclass
class Inputs:
    """The tensors every entry of one configuration shares, on one device.

    ``z``: analytic signal ``(B, N)`` in the compute dtype; ``x = z.real`` the real signal (for
    front ends that take audio); ``params``: the four ``(F,)`` filter tensors in the compute dtype;
    ``z64`` / ``params64``: the same in float64 (the oracle's inputs); ``grad_out``: a fixed random
    ``(B, F, T)`` cotangent for the forward+backward entries.
    """

    cfg: BenchConfig
    z: torch.Tensor
    x: torch.Tensor
    params: tuple
    z64: torch.Tensor
    params64: tuple
    grad_out: torch.Tensor


def build_inputs(cfg: BenchConfig, *, dtype=torch.float32, device="cpu") -> Inputs:
    """Inputs for ``cfg``: a noisy chirp per signal (``testing.make_signal``) and the config's filters."""
    z64 = testing.make_signal((cfg.batch,), cfg.n, dtype=torch.float64, seed=cfg.seed)
    params64 = config_filters(cfg)
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    z = z64.to(cdt)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    grad_out = torch.randn(cfg.batch, cfg.n_filters, cfg.frames, generator=g, dtype=torch.float64)
    return Inputs(
        cfg=cfg,
        z=z.to(device),
        x=z.real.contiguous().to(device),
        params=tuple(p.to(dtype=dtype, device=device) for p in params64),
        z64=z64.to(device),
        params64=tuple(p.to(device) for p in params64),
        grad_out=grad_out.to(dtype=dtype, device=device),
    )


# --------------------------------------------------------------------------------------------
# Naive implementation and FLOP models
# --------------------------------------------------------------------------------------------


def naive_lwvd(z, center, sigma_t, sigma_nu, rho, *, n_fft, hop_length, truncate=4.0):
    """What a user writes from the formulas of SPEC §1: the whole ``(B, N, n_fft)`` lag tensor, one
    ``torch.fft.fft``, then per filter a dense Gaussian over *all* ``n_fft`` bins and the filter's
    full time support, applied to the whole WVD plane as a strided ``conv1d`` (the frequency axis as
    input channels). It computes the same numbers as the operator (same truncation rule), so its
    error against the float64 reference is a correctness check too."""
    bsz, n = z.shape
    m_half = (n_fft - 1) // 2
    zp = torch.nn.functional.pad(z, (m_half, m_half))
    nn = torch.arange(n, device=z.device)[:, None]
    m = torch.arange(-m_half, m_half + 1, device=z.device)[None, :]
    lag = z.new_zeros(bsz, n, n_fft)
    lag[:, :, torch.remainder(m[0], n_fft)] = zp[:, nn + m + m_half] * zp[:, nn - m + m_half].conj()
    w = 2.0 * torch.fft.fft(lag, dim=-1).real  # (B, N, M): the full WVD
    del lag
    wt = w.transpose(1, 2)  # (B, M, N): bins as channels
    t_count = reference.num_frames(n, hop_length)
    nu = torch.arange(n_fft, device=z.device, dtype=w.dtype) / (2 * n_fft)
    d_limit = n - 1 + (t_count - 1) * hop_length
    out = []
    for f in range(center.shape[0]):
        c, st, sn, r = center[f], sigma_t[f], sigma_nu[f], rho[f]
        radius = d_limit if truncate is None else min(d_limit, int(math.floor(truncate * float(st))) + 1)
        d = torch.arange(-radius, radius + 1, device=z.device, dtype=w.dtype)
        a, b = (d / st)[None, :], ((nu - c) / sn)[:, None]
        q = (a * a - 2.0 * r * a * b + b * b) / (1.0 - r * r)
        kern = torch.exp(-0.5 * q)
        if truncate is not None:
            kern = kern * (q <= truncate * truncate)
        kern = kern * ((1.0 / (2 * n_fft)) / (2.0 * math.pi * st * sn * torch.sqrt(1.0 - r * r)))
        padded = torch.nn.functional.pad(wt, (radius, radius + hop_length))
        y = torch.nn.functional.conv1d(padded, kern[None], stride=hop_length)  # (B, 1, >= T)
        out.append(y[:, 0, :t_count])
    return torch.stack(out, dim=1)


def _fft_flops(length: int) -> float:
    """The usual 5 L log2 L real FLOPs of a complex FFT of length L."""
    return 5.0 * length * math.log2(max(length, 2))


def effective_truncate(truncate: Optional[float], dtype=torch.float32) -> float:
    """The truncation radius the kernels apply: ``truncate``, or for ``truncate=None`` the q beyond
    which ``exp(-q/2)`` is no longer a normal number in the compute dtype (the CPU kernels flush
    the subnormal rest to 0: ``Stencil::q_max`` in csrc/cpu/lwvd_cpu.cpp)."""
    if truncate is not None:
        return float(truncate)
    return math.sqrt(-2.0 * math.log(torch.finfo(dtype).tiny))


def filter_radii(cfg: BenchConfig, params64, dtype=torch.float32) -> torch.Tensor:
    """Per filter, the largest |d| (samples) of its ellipse: ``floor(truncate sigma_t + 1)``, as the kernels."""
    st = params64[1].double().cpu()
    d_limit = cfg.n - 1 + (cfg.frames - 1) * cfg.hop
    return torch.clamp(torch.floor(effective_truncate(cfg.truncate, dtype) * st + 1.0), max=d_limit).long()


def operator_rows(cfg: BenchConfig, params64, dtype=torch.float32) -> int:
    """Lag rows n in [0, N) per signal that some filter of some frame reaches (|n - t hop| <= R_f):
    the rows the exact algorithm must transform. At S every row; narrow filters at a large hop fewer."""
    r = int(filter_radii(cfg, params64, dtype).max())
    need = torch.zeros(cfg.n, dtype=torch.bool)
    for t in range(cfg.frames):
        lo, hi = max(0, t * cfg.hop - r), min(cfg.n - 1, t * cfg.hop + r)
        if lo <= hi:
            need[lo:hi + 1] = True
    return int(need.sum())


def ellipse_terms(cfg: BenchConfig, params64) -> float:
    """Lattice points (d, k) inside the truncation ellipses, summed over filters: area
    ``pi truncate^2 sigma_t sigma_nu sqrt(1 - rho^2)`` in samples x cycles/sample, times ``2 M``
    bins per cycle/sample (clipped to the ``n_fft`` bins for very wide filters). For
    ``truncate=None`` the radius is where the weights underflow in float32 (``effective_truncate``)."""
    tr = effective_truncate(cfg.truncate)
    _, st, sn, r = (p.double().cpu() for p in params64)
    area = math.pi * tr**2 * st * sn * torch.sqrt(1 - r * r) * (2 * cfg.n_fft)
    return float(torch.clamp(area, max=(2 * tr * st + 1) * cfg.n_fft).sum())


def lwvd_model_flops(cfg: BenchConfig, params64) -> float:
    """Useful work of the exact algorithm (forward), as the fused kernels do it: per needed lag row
    (``operator_rows``) ``n_fft/2`` complex lag products (6 FLOPs each; the other half is their
    conjugate), two real rows per complex FFT of length ``n_fft`` (5 L log2 L), and per frame and
    filter 2 FLOPs per ellipse term. Used as one numerator for every entry that computes the LWVD, so
    their FLOP/s columns compare like with like. (Until issue #13 this counted one full FFT per
    sample, 1.6x the work at S.)"""
    rows = operator_rows(cfg, params64)
    per_row = 6.0 * (cfg.n_fft // 2) + 0.5 * _fft_flops(cfg.n_fft)
    return cfg.batch * (rows * per_row + 2.0 * cfg.frames * ellipse_terms(cfg, params64))


# --------------------------------------------------------------------------------------------
# Spectrogram identity check (SPEC §1): LWVD with spectrogram widths vs torch.stft
# --------------------------------------------------------------------------------------------


def gaussian_window(n_fft: int, s: float, *, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """Unit-energy Gaussian of std ``s`` samples, centred on index ``n_fft // 2`` (where
    ``torch.stft(center=True)`` puts the frame centre)."""
    j = torch.arange(n_fft, dtype=torch.float64) - n_fft // 2
    g = torch.exp(-0.5 * (j / s) ** 2)
    return (g / g.norm()).to(dtype=dtype, device=device)


def stft_power(z: torch.Tensor, n_fft: int, hop: int, s: float) -> torch.Tensor:
    """``|STFT|^2`` of a complex ``(B, N)`` signal with the Gaussian window (zero padding, so
    ``z = 0`` outside ``[0, N)`` as in the operator): ``(B, n_fft, T)``, bin ``k`` at ``k / n_fft``
    cycles/sample."""
    win = gaussian_window(n_fft, s, dtype=z.real.dtype, device=z.device)
    spec = torch.stft(z, n_fft, hop_length=hop, window=win, center=True, pad_mode="constant",
                      onesided=False, return_complex=True)
    return spec.real.square() + spec.imag.square()


def stft_agreement(dtype=torch.float32, device="cpu", *, n: int = 4000, n_filters: int = 8) -> dict:
    """Max relative difference between ``lwvd_cuda.lwvd`` with spectrogram widths (rho = 0,
    ``truncate=None``, centres on STFT bins) and ``|torch.stft|^2`` with the Gaussian window, on
    frames at least ``n_fft/2`` from either end. One signal of ``n`` samples and ``n_filters``
    filters keep it cheap: with ``truncate=None`` every filter covers the whole plane.

    Two STFTs are compared: the benchmark's own grid (window of ``n_fft`` samples, so the Gaussian is
    cut at +-n_fft/2 = +-3.8 std at S, which alone costs about 2e-4) and the same centres from a
    window of ``2 n_fft`` samples (cut at +-7.7 std), which isolates the identity itself."""
    cfg = standard_config(batch=1, n=n, name="stft-check")
    cfg = replace(cfg, n_filters=n_filters, truncate=None)
    z64 = testing.make_signal((1,), n, dtype=torch.float64, seed=cfg.seed).to(device)
    bins = torch.linspace(16, cfg.n_fft // 2 - 16, n_filters).round().long()
    center = bins.double() / cfg.n_fft  # STFT bin k is k / n_fft cycles/sample
    p64 = [p.to(device) for p in testing.spectrogram_filters(center, cfg.window_std)]
    truth_same = stft_power(z64, cfg.n_fft, cfg.hop, cfg.window_std)[:, bins.to(device), :]
    truth_long = stft_power(z64, 2 * cfg.n_fft, cfg.hop, cfg.window_std)[:, 2 * bins.to(device), :]
    t = torch.arange(cfg.frames, device=device) * cfg.hop
    inner = (t >= cfg.n_fft // 2) & (t <= n - cfg.n_fft // 2)
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    zc = z64.to(cdt)
    out = lwvd_cuda.lwvd(zc, *[p.to(dtype) for p in p64], n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=None)
    return {
        "config": f"B=1, N={n}, F={n_filters} centres on STFT bins {bins.tolist()}, rho=0, truncate=None, "
                  f"{int(inner.sum())} frames at least n_fft/2 from the ends; truth |torch.stft|^2 in float64",
        "dtype": str(dtype).replace("torch.", ""),
        "backend": lwvd_cuda.backend_for(zc, cfg.n_fft)[0],
        "rel_err_window_n_fft": testing.rel_err(out[..., inner], truth_same[..., inner]),
        "rel_err_window_2n_fft": testing.rel_err(out[..., inner], truth_long[..., inner]),
    }


# --------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """What an entry's ``prepare`` returns: ``fn()`` is timed; it returns the forward output
    (a tensor to compare with the reference, or None) - for "fwd+bwd" the gradients are computed
    inside ``fn`` too. ``backend`` names what actually ran; ``note`` anything a reader must know."""

    fn: Callable[[], object]
    backend: str = ""
    note: str = ""
    output_comparable: bool = False  # fn()'s output is the LWVD (B, F, T): compare with float64
    grad_fn: Optional[Callable[[], tuple]] = None  # returns gradients for the error check


@dataclass
class Entry:
    """A benchmark row factory.

    name/mode: the row's label ("fwd" or "fwd+bwd"). ``prepare`` raises ``Unavailable`` (with the
    reason) when the entry cannot run here. ``flops(cfg, params64)`` the FLOP count of one call (None:
    unknown). ``est_bytes(cfg)`` a rough peak working set, to skip sizes that would not fit.
    ``scaling``: part of the N-scaling plot. ``cpu_only``: NumPy and similar.
    """

    name: str
    mode: str
    description: str
    prepare: Callable[..., Prepared]
    flops: Optional[Callable[[BenchConfig, tuple], Optional[float]]] = None
    est_bytes: Callable[[BenchConfig], float] = lambda cfg: 0.0
    scaling: bool = False
    peer: bool = False
    cpu_only: bool = False
    tags: tuple = field(default_factory=tuple)

    @property
    def key(self) -> str:
        return f"{self.name}[{self.mode}]"


class Unavailable(RuntimeError):
    """An entry cannot run in this environment; the message says why (it goes into the table)."""


def _grad_closure(fn_fwd, inputs: Inputs, tensors: list):
    """A closure running forward + backward with the fixed cotangent; returns (out, grads)."""
    grad_out = inputs.grad_out

    def run():
        out = fn_fwd(*tensors)
        grads = torch.autograd.grad(out, tensors, grad_out)
        return out.detach(), grads

    return run


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _op_entry(name: str, op, backend_of, description: str, **kw):
    """fwd and fwd+bwd entries for an operator with the signature of ``lwvd_cuda.lwvd``."""

    def prepare_fwd(cfg, inputs, device, dtype):
        z, params = inputs.z, inputs.params
        backend, note = backend_of(z, cfg)

        def fn():
            with torch.no_grad():
                return op(z, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate)

        return Prepared(fn, backend=backend, note=note, output_comparable=True)

    def prepare_bwd(cfg, inputs, device, dtype):
        backend, note = backend_of(inputs.z, cfg)
        tensors = [_leaf(inputs.z)] + [_leaf(p) for p in inputs.params]
        run = _grad_closure(
            lambda z, *p: op(z, *p, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate), inputs, tensors
        )

        def fn():
            return run()[0]

        return Prepared(fn, backend=backend, note=note, output_comparable=True, grad_fn=lambda: run()[1])

    return [
        Entry(name, "fwd", description, prepare_fwd, **kw),
        Entry(name, "fwd+bwd", description, prepare_bwd, **{k: v for k, v in kw.items() if k != "flops"}),
    ]


def _lwvd_backend(z, cfg):
    backend, reason = lwvd_cuda.backend_for(z, cfg.n_fft)
    if backend == "kernels":
        return f"fused {z.device.type.upper()} kernels", ""
    return "reference (fallback)", f"lwvd_cuda.lwvd ran the pure-PyTorch reference: {reason}"


def _wvd_bytes(cfg: BenchConfig, factor: float) -> float:
    """``factor`` x the size of a float32 (B, N, n_fft) plane."""
    return factor * cfg.batch * cfg.n * cfg.n_fft * 4.0


def _lwvd_bytes(cfg: BenchConfig) -> float:
    """The fused kernels keep nothing (B, N, n_fft)-sized; the reference fallback holds the WVD."""
    if lwvd_cuda.has_cpu_kernels() or lwvd_cuda.has_cuda_kernels():
        return 64.0 * cfg.batch * cfg.n * 8
    return _wvd_bytes(cfg, 3.0)


def _lwvd_flops(cfg, params64):
    return lwvd_model_flops(cfg, params64)


def _prepare_naive(cfg, inputs, device, dtype):
    z, params = inputs.z, inputs.params

    def fn():
        with torch.no_grad():
            return naive_lwvd(z, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=cfg.truncate)

    return Prepared(fn, backend="torch (full lag tensor + conv1d per filter)", output_comparable=True)


# Rows of one floor call: a (rows, n_fft) complex input plus its output fit in half the 512 KiB L2
# of this machine's cores (AMD EPYC), so the floor's input and output stay cache resident.
FLOOR_TILE_BYTES = 256 * 1024


def floor_tile_rows(n_fft: int, dtype) -> int:
    item = 16 if dtype == torch.float64 else 8
    return max(1, FLOOR_TILE_BYTES // (2 * n_fft * item))


def make_fft_floor(cfg: BenchConfig, params64, dtype, device="cpu"):
    """The FFT floor of the exact algorithm: ``B * ceil(rows / 2)`` complex FFTs of length ``n_fft``
    (two real lag rows share one complex FFT; ``rows = operator_rows``), through ``torch.fft`` (MKL on
    the CPU), in L2-sized tiles of a prebuilt input (cache resident, the lag products not counted).
    Returns ``(fn, n_ffts)``.

    On the CPU with ``torch.get_num_threads() = n > 1`` the tiles are split into ``n`` contiguous
    shares, one per worker thread with its own tile, each worker running one-thread FFTs (what the
    fused kernels do: ``at::parallel_for`` tasks calling one-thread FFTs on their own chunks). One
    thread-parallel call per small tile is not a floor: each call pays the thread pool's start-up
    (S at two threads: 127 ms of CPU time for 1000 calls on 32-row tiles against 35-38 ms at one
    thread, README)."""
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    n_ffts = cfg.batch * ((operator_rows(cfg, params64) + 1) // 2)
    tile = min(floor_tile_rows(cfg.n_fft, dtype), max(n_ffts, 1))
    g = torch.Generator().manual_seed(1)
    rows = torch.view_as_complex(torch.randn(tile, cfg.n_fft, 2, generator=g, dtype=torch.float32))
    full, rest = divmod(n_ffts, tile)
    threads = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    threads = max(1, min(threads, full))

    def share(n_full, n_rest):
        src = rows.to(dtype=cdt, device=device)
        dst = torch.empty_like(src)
        src_rest, dst_rest = src[:n_rest], dst[:n_rest]

        def run():
            for _ in range(n_full):
                torch.fft.fft(src, dim=-1, out=dst)
            if n_rest:
                torch.fft.fft(src_rest, dim=-1, out=dst_rest)
            return dst

        return run

    if threads == 1:
        return share(full, rest), n_ffts
    import threading
    from concurrent.futures import ThreadPoolExecutor

    per, extra = divmod(full, threads)
    shares = [share(per + (i < extra), rest if i == threads - 1 else 0) for i in range(threads)]
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fft_floor")
    local = threading.local()

    def one_thread(run):
        if not getattr(local, "single", False):  # the worker's own intra-op setting (thread-local ICVs)
            torch.set_num_threads(1)
            local.single = True
        return run()

    def fn():
        n = torch.get_num_threads()
        try:
            outs = list(pool.map(one_thread, shares))
        finally:
            torch.set_num_threads(n)  # the workers' set_num_threads(1) also set torch's global count
        return outs[-1]

    return fn, n_ffts


def _prepare_fft_floor(cfg, inputs, device, dtype):
    fn, n_ffts = make_fft_floor(cfg, inputs.params64, dtype, device)
    return Prepared(fn, backend="torch.fft", note=f"{n_ffts} complex FFTs (B x needed lag rows / 2, paired) in "
                    f"L2-sized tiles of {floor_tile_rows(cfg.n_fft, dtype)} rows, prebuilt input: the lag products "
                    "are not counted")


def area4_filters(cfg: BenchConfig):
    c, st, sn, r = config_filters(cfg)
    return c, 2.0 * st, 2.0 * sn, r


def _prepare_area4(truncate):
    def prepare(cfg, inputs, device, dtype):
        p64 = area4_filters(cfg)
        params = tuple(p.to(dtype=dtype, device=device) for p in p64)
        z = inputs.z
        terms = ellipse_terms(replace(cfg, truncate=truncate), p64)

        def fn():
            with torch.no_grad():
                return lwvd_cuda.lwvd(z, *params, n_fft=cfg.n_fft, hop_length=cfg.hop, truncate=truncate)

        backend, note = _lwvd_backend(z, cfg)
        if note:  # the reference with truncate=None smooths over the whole plane: minutes, GiBs
            raise Unavailable(f"not run: needs the fused kernels ({note})")
        return Prepared(fn, backend=backend,
                        note=f"filters of 2x the spectrogram widths (area 4), truncate={truncate}: "
                             f"{terms * cfg.frames * cfg.batch / 1e6:.0f} M smoothing terms; compare time per term "
                             f"(GFLOP/s column: 2 FLOPs per term)")

    return prepare


def _area4_flops(truncate):
    return lambda cfg, p64: 2.0 * cfg.batch * cfg.frames * ellipse_terms(replace(cfg, truncate=truncate),
                                                                          area4_filters(cfg))


def _prepare_stft(mode):
    def prepare(cfg, inputs, device, dtype):
        win = gaussian_window(cfg.n_fft, cfg.window_std, dtype=inputs.x.dtype, device=device)
        x = _leaf(inputs.z) if mode == "fwd+bwd" else inputs.z

        def power():
            spec = torch.stft(x, cfg.n_fft, hop_length=cfg.hop, window=win, center=True, pad_mode="constant",
                              onesided=False, return_complex=True)
            return spec.real.square() + spec.imag.square()

        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    return power()
        else:
            def fn():
                out = power()
                torch.autograd.grad(out, [x], torch.ones_like(out))
                return out
        return Prepared(fn, backend="torch.stft", note="complex analytic input, two-sided, Gaussian window std s")

    return prepare


def _stft_flops(cfg, params64):
    return cfg.batch * cfg.frames * (_fft_flops(cfg.n_fft) + 8.0 * cfg.n_fft)


def _import(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install raising anything else
        raise Unavailable(f"not run: import {module} failed ({type(exc).__name__}: {exc}); "
                          f"`pip install {pip_name}` (make bench tries it, log in results/peers_install.log)") from exc


def _prepare_nnaudio(kind, mode):
    def prepare(cfg, inputs, device, dtype):
        features = _import("nnAudio.features", "nnaudio")
        if dtype != torch.float32:
            raise Unavailable("not run: nnAudio layers are float32")
        if kind == "stft":
            layer = features.STFT(n_fft=cfg.n_fft, hop_length=cfg.hop, sr=int(cfg.sample_rate), output_format="Magnitude",
                                  verbose=False, trainable=mode == "fwd+bwd")
        else:
            layer = features.MelSpectrogram(sr=int(cfg.sample_rate), n_fft=cfg.n_fft, hop_length=cfg.hop, n_mels=cfg.n_filters,
                                            fmin=cfg.f_min, fmax=cfg.f_max, trainable_mel=True, trainable_STFT=True,
                                            verbose=False)
        layer = layer.to(device)
        x = inputs.x
        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    return layer(x)
        else:
            xs = _leaf(x)
            wrt = [xs] + [p for p in layer.parameters() if p.requires_grad]

            def fn():
                out = layer(xs)
                torch.autograd.grad(out, wrt, torch.ones_like(out))
                return out
        return Prepared(fn, backend=f"nnAudio {getattr(importlib.import_module('nnAudio'), '__version__', '')}".strip(),
                        note="real input x = Re z; reflect padding (nnAudio default)")

    return prepare


def _prepare_tftb(cfg, inputs, device, dtype):
    if device != "cpu":
        raise Unavailable("not run: tftb is NumPy (CPU only)")
    processing = _import("tftb.processing", "--no-deps tftb")
    import numpy as np

    sig = inputs.z64[0].cpu().numpy()  # one signal, complex128 (tftb works in float64)
    stamps = np.arange(0, cfg.n, cfg.hop)  # t*hop < N: tftb takes in-signal timestamps only
    # Time-smoothing window: the filters' time Gaussian (std sigma_t) over +-4 std; lag window over
    # the full n_fft lag range - the shapes PEERS.md measured (about 381 and 511 taps at S).
    half_t = int(math.ceil(4 * cfg.sigma_t))
    jt = np.arange(-half_t, half_t + 1)
    twin = np.exp(-0.5 * (jt / cfg.sigma_t) ** 2)
    jf = np.arange(-(cfg.n_fft // 2 - 1), cfg.n_fft // 2)
    fwin = np.exp(-0.5 * (jf / (cfg.n_fft / 6.0)) ** 2)

    def fn():
        return processing.smoothed_pseudo_wigner_ville(sig, timestamps=stamps, freq_bins=cfg.n_fft,
                                                       twindow=twin, fwindow=fwin)

    return Prepared(fn, backend="tftb (NumPy, float64)",
                    note=("ONE signal" + (f" (not B={cfg.batch})" if cfg.batch > 1 else "") + f", {len(stamps)} frames, fixed separable SPWVD (rho=0 only), "
                         f"windows of {len(twin)} and {len(fwin)} taps; timing only"))


def _module_prepared(layer, x, mode, *, backend, note, forward=None):
    """A Prepared timing ``forward(layer, x)`` (default ``layer(x)``) of an ``nn.Module`` peer: under
    no_grad for "fwd"; for "fwd+bwd" with gradients for the input and every trainable parameter of
    the layer (a ones cotangent)."""
    forward = forward or (lambda m, inp: m(inp))
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return forward(layer, x)
    else:
        xs = _leaf(x)
        wrt = [xs] + [p for p in layer.parameters() if p.requires_grad]

        def fn():
            out = forward(layer, xs)
            torch.autograd.grad(out, wrt, torch.ones_like(out))
            return out
    return Prepared(fn, backend=backend, note=note)


def _prepare_leaf(mode):
    def prepare(cfg, inputs, device, dtype):
        features = _import("speechbrain.lobes.features", "torchaudio==2.11.0 speechbrain")
        if dtype != torch.float32:
            raise Unavailable("not run: SpeechBrain's LEAF is float32")
        version = getattr(importlib.import_module("speechbrain"), "__version__", "")
        layer = features.Leaf(out_channels=cfg.n_filters, window_len=cfg.window_seconds * 1000.0,
                              window_stride=cfg.hop / cfg.sample_rate * 1000.0, sample_rate=int(cfg.sample_rate),
                              in_channels=1).to(device)
        return _module_prepared(layer, inputs.x, mode, backend=f"SpeechBrain {version} LEAF".replace("  ", " "),
                                note=f"real input x = Re z; {cfg.n_filters} learnable Gabor filters of "
                                     f"{cfg.window_seconds * 1000:g} ms, Gaussian lowpass pooling, learnable PCEN; "
                                     f"fwd+bwd: gradients for x and all its parameters")

    return prepare


def _prepare_torchaudio_mel(mode):
    def prepare(cfg, inputs, device, dtype):
        transforms = _import("torchaudio.transforms", "torchaudio==2.11.0")
        version = getattr(importlib.import_module("torchaudio"), "__version__", "")
        win = int(round(cfg.window_seconds * cfg.sample_rate))
        layer = transforms.MelSpectrogram(sample_rate=int(cfg.sample_rate), n_fft=cfg.n_fft, win_length=win,
                                          hop_length=cfg.hop, f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_filters,
                                          power=2.0).to(device=device, dtype=inputs.x.dtype)
        return _module_prepared(layer, inputs.x, mode, backend=f"torchaudio {version}",
                                note=f"real input x = Re z; fixed (not learnable) {cfg.n_filters}-band mel filterbank, "
                                     f"Hann window of {win} samples, power 2, reflect padding; fwd+bwd: gradient for x")

    return prepare


def _prepare_dstft(window_mode, mode):
    def prepare(cfg, inputs, device, dtype):
        dstft = _import("dstft", "dstft")
        if dtype != torch.float32:
            raise Unavailable("not run: timed in float32 only")
        win = int(round(cfg.window_seconds * cfg.sample_rate))
        layer = dstft.DSTFT(n_fft=cfg.n_fft, win_length=win, hop_length=cfg.hop, window_mode=window_mode).to(device)
        layer.initialize(inputs.x)  # allocates the frame-dependent parameters (dstft's rule)
        what = {"time": "one learnable window length per frame (FFT backend)",
                "frequency": "one learnable window length per frequency bin (DFT backend): like LWVD's per-filter widths"}
        return _module_prepared(layer, inputs.x, mode, backend=f"dstft {getattr(dstft, '__version__', '')}".strip(),
                                forward=lambda m, inp: m(inp)[0],
                                note=f"real input x = Re z; window_mode={window_mode!r}: {what[window_mode]}; Hann "
                                     f"window initialised at {win} samples; magnitude, {cfg.n_fft // 2 + 1} bins")

    return prepare


def _prepare_lwvd_n_fft(n_fft, mode):
    """``lwvd_cuda.lwvd`` at another ``n_fft`` (torchaudio's default 400: not a power of two, so the
    CPU kernels use ATen's FFT and CUDA falls back to the reference). Not compared with the
    oracle, which is computed at the configuration's n_fft."""

    def prepare(cfg, inputs, device, dtype):
        backend, note = _lwvd_backend(inputs.z, replace(cfg, n_fft=n_fft))
        note = (note + "; " if note else "") + f"n_fft={n_fft} instead of {cfg.n_fft}: no error column"
        kw = dict(n_fft=n_fft, hop_length=cfg.hop, truncate=cfg.truncate)
        if mode == "fwd":
            def fn():
                with torch.no_grad():
                    return lwvd_cuda.lwvd(inputs.z, *inputs.params, **kw)
            return Prepared(fn, backend=backend, note=note)
        tensors = [_leaf(inputs.z)] + [_leaf(p) for p in inputs.params]
        run = _grad_closure(lambda z, *p: lwvd_cuda.lwvd(z, *p, **kw), inputs, tensors)
        return Prepared(lambda: run()[0], backend=backend, note=note)

    return prepare


# ---- Hermite fast path (lwvd(..., method="hermite"), docs/hermite.md) and the exact kernels on the
# same filters. Filter sets, all derived from the config's spectrogram filters (float64, then cast):
#   spectrogram: the config's own (area ratio 1, one term each);
#   melcell: sigma_nu widened to each mel cell's FWHM where that is wider (area ratio 1 .. ~3.6);
#   trained: what training from the spectrogram init gives (area ratio U[0.8, 1.3], |rho| <= 0.2,
#            time spreads within e^+-0.3 of the init; seeded).
HERMITE_FILTER_SETS = ("spectrogram", "melcell", "trained")


def hermite_filter_set(kind: str, params64: tuple, seed: int = 0) -> tuple:
    """(center, sigma_t, sigma_nu, rho) float64 for one of ``HERMITE_FILTER_SETS``."""
    center, sigma_t, sigma_nu, rho = params64
    if kind == "spectrogram":
        return params64
    if kind == "melcell":
        cell = torch.empty_like(center)  # distance between neighbouring centres
        cell[1:-1] = (center[2:] - center[:-2]) / 2
        cell[0], cell[-1] = center[1] - center[0], center[-1] - center[-2]
        return center, sigma_t, torch.maximum(sigma_nu, cell / (2 * math.sqrt(2 * math.log(2)))), rho
    if kind == "trained":
        g = torch.Generator().manual_seed(seed)
        n = center.shape[0]
        u = lambda: torch.rand(n, generator=g, dtype=torch.float64)  # noqa: E731
        area, r = 0.8 + 0.5 * u(), 0.4 * u() - 0.2
        st = sigma_t * torch.exp(0.6 * u() - 0.3)
        return center, st, area / (4 * math.pi * st) / torch.sqrt(1 - r * r), r
    raise ValueError(f"unknown filter set {kind!r}; known: {HERMITE_FILTER_SETS}")


def _hermite_entries() -> list[Entry]:
    entries = []
    for kind in HERMITE_FILTER_SETS:
        for method in ("hermite", "exact"):
            if method == "exact" and kind == "spectrogram":
                continue  # that is the `lwvd` entry
            name = f"hermite_{kind}" if method == "hermite" else f"lwvd_{kind}"
            if kind == "spectrogram":
                name = "hermite"
            for mode in ("fwd", "fwd+bwd"):
                entries.append(Entry(
                    name, mode,
                    f"lwvd_cuda.lwvd(method={method!r}) on the {kind!r} filter set"
                    + (" (rtol 1e-4, untruncated, no lag window)" if method == "hermite" else " (truncate of the config)"),
                    _prepare_hermite(kind, method, mode), est_bytes=_lwvd_bytes,
                ))
    # The forward with the inference cache off (lwvd_cuda.hermite.INFERENCE_CACHE): what a forward
    # with new filter values costs (a training step's forward), the windows rebuilt every call.
    for kind in ("spectrogram", "trained"):
        entries.append(Entry(
            "hermite_nocache" if kind == "spectrogram" else f"hermite_{kind}_nocache", "fwd",
            f"lwvd_cuda.lwvd(method='hermite') on the {kind!r} filter set, inference cache off (new filter values)",
            _prepare_hermite(kind, "hermite", "fwd", cache=False), est_bytes=_lwvd_bytes,
        ))
    return entries


def _prepare_hermite(kind: str, method: str, mode: str, cache: bool = True):
    def prepare(cfg, inputs, device, dtype):
        params = tuple(p.to(dtype=dtype, device=device) for p in hermite_filter_set(kind, inputs.params64, cfg.seed))
        kw = dict(n_fft=cfg.n_fft, hop_length=cfg.hop)
        kw.update(method="hermite", rtol=1e-4) if method == "hermite" else kw.update(truncate=cfg.truncate)
        if method == "hermite":
            from lwvd_cuda import hermite

            backend, note = "Hermite sum (torch ops)", hermite.plan(*params, rtol=1e-4).summary()
        else:
            backend, note = _lwvd_backend(inputs.z, cfg)
        # Not compared with the reference of the config's filters (other filters; the fast path is the
        # untruncated operator without lag window): its error is measured in docs/hermite.md.
        if mode == "fwd":
            def fn():
                from lwvd_cuda import hermite

                was, hermite.INFERENCE_CACHE = hermite.INFERENCE_CACHE, cache and hermite.INFERENCE_CACHE
                try:
                    with torch.no_grad():
                        return lwvd_cuda.lwvd(inputs.z, *params, **kw)
                finally:
                    hermite.INFERENCE_CACHE = was

            return Prepared(fn, backend=backend, note=note)
        tensors = [_leaf(inputs.z)] + [_leaf(p) for p in params]
        run = _grad_closure(lambda z, *p: lwvd_cuda.lwvd(z, *p, **kw), inputs, tensors)
        return Prepared(lambda: run()[0], backend=backend, note=note)

    return prepare


def _build_entries() -> list[Entry]:
    entries: list[Entry] = []
    entries += _op_entry(
        "lwvd", lwvd_cuda.lwvd, _lwvd_backend,
        "lwvd_cuda.lwvd: the fused kernels of the device (or the reference when none are compiled)",
        flops=_lwvd_flops, est_bytes=_lwvd_bytes, scaling=True, tags=("tilted",),
    )
    entries += _op_entry(
        "reference", reference.lwvd, lambda z, cfg: ("torch (reference.py)", ""),
        "lwvd_cuda.reference.lwvd in the run dtype: chunked lag products, smoothing over each ellipse's box",
        flops=_lwvd_flops, est_bytes=lambda cfg: _wvd_bytes(cfg, 3.0), scaling=True, tags=("tilted",),
    )
    entries.append(Entry(
        "naive", "fwd", "naive PyTorch from the formulas: full (B, N, n_fft) lag tensor, torch.fft, dense conv1d per filter",
        _prepare_naive, flops=_lwvd_flops, est_bytes=lambda cfg: _wvd_bytes(cfg, 10.0),  # 1.34 GiB seen at S
    ))
    entries.append(Entry(
        "fft_floor", "fwd", "paired, cache-resident torch.fft of the lag rows the operator needs (B x rows/2 "
        "complex FFTs of n_fft in L2-sized tiles): the FFT floor of the exact algorithm",
        _prepare_fft_floor,
        flops=lambda cfg, p: cfg.batch * ((operator_rows(cfg, p) + 1) // 2) * _fft_flops(cfg.n_fft),
        est_bytes=lambda cfg: 2.0 * FLOOR_TILE_BYTES, scaling=True,
    ))
    for trunc, label in ((4.0, "truncate4"), (None, "untruncated")):
        entries.append(Entry(
            f"lwvd_area4_{label}", "fwd", f"lwvd_cuda.lwvd, area-4 filters (2x spectrogram widths), truncate={trunc}: "
            "cost per smoothing term with and without truncation",
            _prepare_area4(trunc), flops=_area4_flops(trunc), est_bytes=_lwvd_bytes,
        ))
    for mode in ("fwd", "fwd+bwd"):
        entries.append(Entry(
            "stft_spectrogram", mode, "torch.stft, Gaussian window of std s, hop 160, power |.|^2 (one FFT per hop)",
            _prepare_stft(mode), flops=_stft_flops if mode == "fwd" else None,
            est_bytes=lambda cfg: 16.0 * cfg.batch * cfg.frames * cfg.n_fft * 4, scaling=mode == "fwd",
        ))
    for mode in ("fwd", "fwd+bwd"):
        entries.append(Entry("nnaudio_stft", mode, "nnAudio features.STFT (conv1d STFT, magnitude)",
                             _prepare_nnaudio("stft", mode), peer=True))
        entries.append(Entry("nnaudio_mel", mode, "nnAudio features.MelSpectrogram(trainable_mel, trainable_STFT), 80 mels",
                             _prepare_nnaudio("mel", mode), peer=True))
    entries.append(Entry("tftb_spwvd", "fwd", "tftb smoothed_pseudo_wigner_ville, one signal, NumPy",
                         _prepare_tftb, peer=True, cpu_only=True))
    for mode in ("fwd", "fwd+bwd"):
        entries.append(Entry("lwvd_n_fft_400", mode, "lwvd_cuda.lwvd at n_fft=400 (torchaudio's default; not a power of two)",
                             _prepare_lwvd_n_fft(400, mode)))
    for mode in ("fwd", "fwd+bwd"):
        entries.append(Entry("speechbrain_leaf", mode, "SpeechBrain LEAF: learnable Gabor filters, Gaussian pooling, PCEN",
                             _prepare_leaf(mode), peer=True))
        entries.append(Entry("torchaudio_mel", mode, "torchaudio.transforms.MelSpectrogram (fixed mel filterbank)",
                             _prepare_torchaudio_mel(mode), peer=True))
        entries.append(Entry("dstft", mode, "dstft.DSTFT, learnable window length per frame",
                             _prepare_dstft("time", mode), peer=True))
        entries.append(Entry("dstft_freq", mode, "dstft.DSTFT, learnable window length per frequency bin",
                             _prepare_dstft("frequency", mode), peer=True))
    entries += _hermite_entries()
    return entries


ENTRIES: list[Entry] = _build_entries()


def get_entries(selection: Optional[str] = None) -> list[Entry]:
    """Entries whose name (or ``name[mode]`` key) is in the comma-separated ``selection`` (all if None)."""
    if not selection:
        return list(ENTRIES)
    wanted = [s.strip() for s in selection.split(",") if s.strip()]
    known = {e.name for e in ENTRIES} | {e.key for e in ENTRIES}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"--entries: unknown {unknown}; known: {sorted({e.name for e in ENTRIES})}")
    return [e for e in ENTRIES if e.name in wanted or e.key in wanted]
