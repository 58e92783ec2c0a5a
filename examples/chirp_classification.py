"""Learn chirplet filters: classify up- vs down-sweeps (bird / bat-like calls) in noise.

    python examples/chirp_classification.py [--steps 150] [--out docs/images]

Four classes of 0.25 s clips at 8 kHz: a linear frequency sweep of 0.15 s, rising or falling,
slow (5 kHz/s) or fast (12.5 kHz/s), at a random start frequency, time and amplitude, in white noise.
Two front ends feed the same small head, which pools each filter's log-energy over time (mean and
max: a bag of frames, as many audio classifiers do):

* a **fixed Gaussian-window spectrogram**: what the ``LWVD`` layer computes at its init, frozen.
  It is evaluated directly as ``|STFT|^2`` (the layer at init equals it, SPEC §1; the script checks
  the two agree on a few clips), because the direct form is ~100x cheaper than the exact WVD;
* the **learned LWVD**: that layer trained with the head.

A spectrogram frame with a symmetric window cannot tell a rising sweep from a falling one (the
spectrogram of a time-reversed signal is the time-reversed spectrogram), and time pooling removes the
order of frames: it gets the rate right and guesses the direction (~50 %). The LWVD can tilt its
filters along the sweeps (``rho != 0``): a tilted filter responds more to the chirps it is aligned
with, so direction becomes visible within a frame. The learned tilts are printed (``describe()``) and
drawn (``plot_filters``) before and after training.

CPU only, seeded, deterministic data; about 2-3 minutes on 2 cores with the pure-PyTorch reference,
much less with the fused CPU kernels.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import torch
from torch import nn

try:
    import lwvd_cuda
except ImportError:  # run from a source checkout (`make build` builds in place, no install)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import lwvd_cuda
from lwvd_cuda import LWVD

SR = 8000.0
N = 2000  # 0.25 s
CALL = 0.15  # seconds of sweep
RATES = (5000.0, 12500.0)  # Hz/s: sweeps of 750 Hz and 1875 Hz
CLASSES = ("up slow", "up fast", "down slow", "down fast")


def make_batch(n: int, generator: torch.Generator, snr_db: float = 0.0):
    """``(x (n, N) float32, labels (n,))``: one sweep per clip, unit-RMS white noise at ``snr_db``."""
    y = torch.randint(0, 4, (n,), generator=generator)
    rate = torch.tensor(RATES)[y % 2] * torch.where(y < 2, 1.0, -1.0)  # signed Hz/s
    span = rate.abs() * CALL
    # start frequency: the whole sweep stays inside [400, 3600] Hz
    low = 400.0 + (3200.0 - span) * torch.rand(n, generator=generator)
    f0 = torch.where(rate > 0, low, low + span)
    onset = (0.25 - CALL) * torch.rand(n, generator=generator)
    t = torch.arange(N, dtype=torch.float64)[None, :] / SR
    tau = t - onset[:, None].double()
    inside = (tau >= 0) & (tau <= CALL)
    # Hann-shaped envelope: smooth on- and offsets, no clicks that would mark the sweep's ends.
    env = torch.where(inside, torch.sin(math.pi * tau.clamp(0, CALL) / CALL) ** 2, torch.zeros_like(tau))
    phase = 2 * math.pi * (f0[:, None].double() * tau + 0.5 * rate[:, None].double() * tau**2)
    call = env * torch.cos(phase + 2 * math.pi * torch.rand(n, 1, generator=generator, dtype=torch.float64))
    call = call / call.pow(2).mean(-1, keepdim=True).sqrt()
    noise = torch.randn(n, N, generator=generator, dtype=torch.float64)
    x = 10 ** (snr_db / 20) * call + noise
    x = x * (0.5 + torch.rand(n, 1, generator=generator, dtype=torch.float64))  # random gain
    return x.float(), y


class Head(nn.Module):
    """Per-filter log energy, pooled over time (mean and max), then a linear classifier."""

    def __init__(self, n_filters: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(2 * n_filters)
        self.linear = nn.Linear(2 * n_filters, n_classes)

    def forward(self, k: torch.Tensor) -> torch.Tensor:  # k (B, F, T)
        # Energies are normalised per clip (random gain), clamped at 0: sub-Heisenberg filters may
        # output small negative values.
        k = k / k.mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        e = torch.log(k.clamp_min(0) + 1e-3)
        return self.linear(self.norm(torch.cat([e.mean(-1), e.amax(-1)], dim=1)))


class GaussianSpectrogram(nn.Module):
    """``|sum_j z[j] g[j - t hop] exp(-2i pi nu_f j)|^2`` at the layer's initial centres and window.

    The frozen baseline: equal to ``layer`` at its init (rho = 0, on the Heisenberg bound) up to the
    layer's truncation at 4 sigma (~1e-3 relative).
    """

    def __init__(self, layer: LWVD):
        super().__init__()
        self.hop = layer.hop_length
        s = layer.window_seconds / 6.0 * layer.sample_rate  # window std, samples
        self.half = int(math.ceil(5 * s))
        j = torch.arange(-self.half, self.half + 1, dtype=torch.float64)
        g = (math.pi * s * s) ** -0.25 * torch.exp(-(j**2) / (2 * s * s))
        nu = layer.center_hz.detach().double() / layer.sample_rate
        # |.|^2 drops the frame's phase exp(-2i pi nu t hop), so the kernel can use relative time j.
        self.register_buffer("kernel", (g[None, :] * torch.exp(-2j * math.pi * nu[:, None] * j[None, :])).to(torch.complex64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, F, T)
        z = lwvd_cuda.analytic_signal(x)
        z = nn.functional.pad(torch.view_as_real(z).transpose(-1, -2), (self.half, self.half + self.hop))
        z = torch.view_as_complex(z.transpose(-1, -2).contiguous())
        frames = z.unfold(-1, 2 * self.half + 1, self.hop)[:, : 1 + x.shape[-1] // self.hop]  # (B, T, taps)
        return (frames @ self.kernel.T).abs().square().transpose(1, 2)


def make_front_end() -> LWVD:
    # 16 ms Gaussian window (std 2.7 ms), linear grid, every filter the window's bandwidth: the plain
    # spectrogram (SPEC §1 identity, which main() checks against GaussianSpectrogram).
    return LWVD(SR, 10, n_fft=128, hop_length=32, f_min=300, f_max=3700, init="linear_window", window_seconds=0.016)


def accuracy(front: nn.Module, head: Head, x: torch.Tensor, y: torch.Tensor) -> float:
    front.eval(), head.eval()
    with torch.no_grad():
        pred = torch.cat([head(front(xb)).argmax(-1) for xb in x.split(100)])
    front.train(), head.train()
    return (pred == y).float().mean().item()


def train(front: nn.Module, learn_front: bool, steps: int, batch: int, seed: int, log_every: int) -> Head:
    torch.manual_seed(seed)
    head = Head(front.kernel.shape[0] if isinstance(front, GaussianSpectrogram) else front.n_filters, len(CLASSES))
    groups = [dict(params=head.parameters(), lr=1e-2)]
    if learn_front:
        groups.append(dict(params=front.parameters(), lr=3e-2))
    else:
        front.requires_grad_(False)
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(seed + 1)  # the same batches for both front ends
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, y = make_batch(batch, gen)
        with torch.set_grad_enabled(learn_front):
            k = front(x)
        loss = nn.functional.cross_entropy(head(k), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            print(f"  step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--test", type=int, default=300, help="test clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (default 1: on a machine whose cores are shared, OpenMP threads that spin at "
        "barriers slow the fused kernels down many times; raise it on an idle machine)",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs", "images"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="lwvd_cuda: running the pure-PyTorch reference")
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    backend, why = lwvd_cuda.backend_for(torch.zeros(1, dtype=torch.complex64), 128)
    print(f"op backend: {backend} ({why})")

    x_test, y_test = make_batch(args.test, torch.Generator().manual_seed(12345))

    before = make_front_end()  # the init, for the "before" plot
    fixed = GaussianSpectrogram(before)
    with torch.no_grad():
        a, b = before(x_test[:4]), fixed(x_test[:4])
    print(f"fixed spectrogram vs LWVD at init on 4 clips: max rel diff {((a - b).abs().max() / b.abs().max()).item():.1e}")
    print("fixed Gaussian spectrogram + head:")
    head_fixed = train(fixed, False, args.steps, args.batch, args.seed, max(1, args.steps // 5))
    acc_fixed = accuracy(fixed, head_fixed, x_test, y_test)

    print("learned LWVD + head:")
    learned = make_front_end()
    head_learned = train(learned, True, args.steps, args.batch, args.seed, max(1, args.steps // 5))
    acc_learned = accuracy(learned, head_learned, x_test, y_test)

    print(f"\ntest accuracy on {args.test} clips ({len(CLASSES)} classes, chance 25 %):")
    print(f"  fixed Gaussian spectrogram: {100 * acc_fixed:5.1f} %")
    print(f"  learned LWVD:               {100 * acc_learned:5.1f} %")
    print(f"\nsweep rates in the data: +-{RATES[0]:.0f} and +-{RATES[1]:.0f} Hz/s. Learned filters:")
    print(learned.describe())

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from lwvd_cuda.plotting import plot_filters, plot_lwvd
    except ImportError:
        print("matplotlib not installed: no figure")
        return
    os.makedirs(args.out, exist_ok=True)
    demo, demo_y = make_batch(8, torch.Generator().manual_seed(7), snr_db=10.0)
    i = int((demo_y == 1).nonzero()[0])  # a fast up-sweep
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
    plot_filters(before, ax=axes[0, 0], title="filters at init (Gaussian spectrogram)")
    plot_filters(learned, ax=axes[0, 1], title=f"learned filters (test acc. {100 * acc_learned:.0f} % vs {100 * acc_fixed:.0f} %)")
    rates = [r * sign for r in RATES for sign in (1, -1)]
    plot_filters(learned, ax=axes[0, 2], relative=True, chirp_rates=rates, colorbar=False,
                 title="learned, around own centres\n(dashed: the sweep rates in the data)")
    plot_lwvd(before, demo[i], ax=axes[1, 0], title="a fast up-sweep (10 dB SNR): spectrogram (init)")
    plot_lwvd(learned, demo[i], ax=axes[1, 1], title="same clip: learned LWVD")
    ax = axes[1, 2]
    table = learned.describe()
    ax.scatter(table.column("center_hz"), [r / 1e3 for r in table.column("chirp_rate_hz_per_s")], c="k")
    for r in rates:
        ax.axhline(r / 1e3, ls="--", color="0.6", lw=0.8)
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel("filter centre (Hz)")
    ax.set_ylabel("learned ridge slope (kHz/s)")
    ax.set_title("chirp rate each filter follows\n(dashed: the sweep rates in the data)")
    path = os.path.join(args.out, "chirp_filters.png")
    fig.savefig(path, dpi=72)
    print(f"saved {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
