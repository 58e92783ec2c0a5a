"""The paper's accuracy table as a command: front ends x heads x learning rates x seeds.

    python -m benchmarks.accuracy                      # the README configuration (spoken digits)
    python -m benchmarks.accuracy --smoke              # seconds: every front end and head, a few steps
    python -m benchmarks.accuracy --data folder:/path/to/audio --frontends spectrogram,lwvd,mel
    python -m benchmarks.accuracy --full-grid          # the paper's grid (days on a CPU)

What it does (protocol of ``/work/shared/PAPER_SETUP.md``, scaled by flags):

* **Data**: the espeak-ng spoken-digit set (``benchmarks/speech_digits.py``; voice-disjoint
  train / val / test; cached under ``~/.cache/lwvd_cuda``) or ``--data folder:PATH`` (one
  sub-folder per class). Each waveform has its mean removed and is divided by its maximum (the
  authors' normalisation).
* **Front ends** (``benchmarks/frontends.py``): ``spectrogram`` (the LWVD at init, frozen), ``lwvd``
  (learned), ``mel`` (learnable mel filterbank), ``sinc`` (SincNet), ``gabor`` (learnable Gabor /
  Morlet), ``leaf`` (SpeechBrain's, when importable). Each outputs an energy map ``U`` ``(B, F, T)``,
  multiplied by a fixed gain so that its mean over the first 64 training clips is 1 at init (so the
  paper's ``+ 0.1`` and the log floor mean the same thing for every front end).
* **Heads** ``<classifier>/<features>``: classifier ``linear`` (Dropout 0.1 -> Linear), ``nonlinear``
  (Linear 256 -> BatchNorm -> LeakyReLU -> Dropout 0.1 -> Linear) or ``joint`` (the paper's joint
  scattering: Conv2d 64 x (32 x 16) on ``log(U + 0.1)`` -> BatchNorm -> |.| -> mean over time,
  concatenated with the pooled features); features ``pool_log`` (the paper's: ``log(mean_t |U| + 0.1)``),
  ``log_pool`` (compression before pooling: ``mean_t log(max(U, 0) + floor)``, the package's
  :class:`lwvd_cuda.compression.Log`) or ``pcen_pool`` (``mean_t PCEN(U)``, the package's learnable
  per-channel :class:`lwvd_cuda.compression.PCEN`).
* **Training**: Adam, batch 16, softmax cross-entropy, piecewise-constant schedule (lr; lr/3 from 50 %
  of the epochs; lr/6 from 75 %). The LWVD's filters get ``lr * --filter-lr-scale`` through
  ``LWVD.parameter_groups`` (1 = the paper's single rate). Test accuracy is read at the epoch of
  best validation accuracy (the first such epoch).
* **Output** (``--out``, default ``results/accuracy``): ``runs.json`` (every run: config, per-epoch
  history (test accuracy is evaluated only on epochs where validation accuracy improves), best epoch, seconds per epoch, filter snapshots before/after), ``table.md`` (mean ± std
  over seeds per front end, head and lr; seconds per epoch; filter movement) and ``accuracy.png``
  (accuracy per front end and head; learned LWVD filters before/after). Both are rewritten after
  every run, so an interrupted run leaves a valid partial table. A tqdm bar shows progress.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    import lwvd_cuda  # noqa: F401
except ImportError:  # run from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lwvd_cuda.compression import PCEN, Log

from benchmarks import frontends as fe_lib
from benchmarks import speech_digits

HEAD_CLASSIFIERS = ("linear", "nonlinear", "joint")
HEAD_FEATURES = ("pool_log", "log_pool", "pcen_pool")
DEFAULT_HEADS = "linear/log_pool,nonlinear/log_pool,linear/pool_log,nonlinear/pool_log"
HEAD_TITLES = {
    "pool_log": "log of the time mean (paper)",
    "log_pool": "time mean of log",
    "pcen_pool": "time mean of PCEN",
}
# A head spec is ``classifier/features`` or ``classifier/features/bn``: ``bn`` standardises the pooled
# features per channel (BatchNorm1d without affine parameters) before the classifier. The paper's
# heads feed raw log energies to the Linear layer; their per-channel offsets differ by several units
# while the class information is in differences of a fraction of one, so a linear head trained for a
# few epochs at lr 1e-3 is far from converged (frozen features: 21 % after 10 epochs, 52 % after 100),
# and a learnable front end then wins partly by rescaling the head's inputs, not by what it extracts.
HEAD_NORMS = ("bn",)
LEARNED_LWVD = ("lwvd", "lwvd_nonneg")  # front ends whose filters train through LWVD.parameter_groups
PAPER_OFFSET = 0.1  # the authors' log(mean + 0.1)


# --------------------------------------------------------------------------- heads

class Features(nn.Module):
    """``(B, F, T)`` energy -> ``(B, F)`` pooled features (``HEAD_FEATURES``)."""

    def __init__(self, kind: str, n_channels: int, log_floor: float):
        super().__init__()
        self.kind = kind
        self.compress = {"pool_log": None, "log_pool": Log(log_floor), "pcen_pool": PCEN(n_channels, floor=log_floor)}[kind]

    def forward(self, u):
        if self.kind == "pool_log":
            return torch.log(u.abs().mean(-1) + PAPER_OFFSET)
        return self.compress(u).mean(-1)


class Head(nn.Module):
    def __init__(self, classifier: str, features: str, n_channels: int, n_frames: int, n_classes: int, log_floor: float,
                 norm: str = ""):
        super().__init__()
        self.features = Features(features, n_channels, log_floor)
        self.norm = nn.BatchNorm1d(n_channels, affine=False) if norm == "bn" else nn.Identity()
        self.classifier = classifier
        width = n_channels
        if classifier == "joint":
            kf, kt = min(32, n_channels), min(16, n_frames)
            self.conv = nn.Conv2d(1, 64, (kf, kt))
            self.bn2d = nn.BatchNorm2d(64)
            width += 64 * (n_channels - kf + 1)
        if classifier == "nonlinear":
            self.mlp = nn.Sequential(nn.Linear(width, 256), nn.BatchNorm1d(256), nn.LeakyReLU(), nn.Dropout(0.1), nn.Linear(256, n_classes))
        else:
            self.out = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, n_classes))

    def forward(self, u):
        z = self.norm(self.features(u))
        if self.classifier == "joint":
            j = self.bn2d(self.conv(torch.log(u.abs() + PAPER_OFFSET)[:, None])).abs().mean(-1)  # (B, 64, F')
            z = torch.cat([z, j.flatten(1)], dim=1)
        return self.mlp(z) if self.classifier == "nonlinear" else self.out(z)


class Model(nn.Module):
    def __init__(self, front, head, gain: float):
        super().__init__()
        self.front, self.head, self.gain = front, head, gain

    def forward(self, h):  # h: the front end's fixed-stage output
        return self.head(self.front.learned(h) * self.gain)


# --------------------------------------------------------------------------- filter movement

def _spacing(c: torch.Tensor) -> torch.Tensor:
    if c.numel() < 2:
        return torch.ones_like(c)
    g = (c[1:] - c[:-1]).abs()
    return torch.cat([g[:1], 0.5 * (g[1:] + g[:-1]), g[-1:]])


def movement(before: dict, after: dict) -> dict:
    """Centre shift / spacing, |rho|, area ratio and spread ratios between two snapshots."""
    out = {}
    if "center_hz" in before:
        c0, c1 = before["center_hz"], after["center_hz"]
        spacing = _spacing(torch.sort(c0).values)[torch.argsort(torch.argsort(c0))]
        shift = (c1 - c0).abs() / spacing.clamp_min(1e-3 * float(spacing.max()))
        out.update(center_shift_over_spacing_mean=float(shift.mean()), center_shift_over_spacing_max=float(shift.max()))
    if "rho" in after:
        out.update(abs_rho_mean=float(after["rho"].abs().mean()), abs_rho_max=float(after["rho"].abs().max()))
    if "area_ratio" in after:
        a0, a1 = before["area_ratio"], after["area_ratio"]
        out.update(area_ratio_before_mean=float(a0.mean()), area_ratio_mean=float(a1.mean()),
                   area_ratio_min=float(a1.min()), area_ratio_max=float(a1.max()),
                   sub_heisenberg_filters=int((a1 < 1 - 1e-4).sum()))
    for key in ("time_spread_s", "bandwidth_hz"):
        if key in before:
            r = after[key] / before[key]
            out.update({f"{key}_ratio_geomean": float(torch.exp(torch.log(r).mean())),
                        f"{key}_ratio_min": float(r.min()), f"{key}_ratio_max": float(r.max())})
    if "weight" in before:
        w0, w1 = before["weight"], after["weight"]
        out.update(weight_rel_change=float((w1 - w0).norm() / w0.norm()))
    return out


# --------------------------------------------------------------------------- one run

def accuracy(model, h, y, batch):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((model(h[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return 100.0 * correct / max(1, len(y))


def run_one(spec: dict, data: dict, args, cache: dict) -> dict:
    """Train one (front end, head, lr, seed, filter_lr_scale) configuration; returns its record."""
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])
    front = fe_lib.build(spec["frontend"], sample_rate=args.sample_rate, n_filters=args.n_filters, n_fft=args.n_fft,
                         hop=args.hop, window_seconds=args.window, f_min=args.f_min, f_max=args.f_max)
    key = spec["frontend"]
    if front.has_fixed_stage:
        if key not in cache:  # the fixed stage is deterministic: one pass over the data per front end
            t0 = time.perf_counter()
            cache[key] = {s: _batched(front.fixed, data[s][0], args.batch * 4) for s in ("train", "val", "test")}
            cache[key + ":seconds"] = time.perf_counter() - t0
        hs = cache[key]
    else:
        hs = {s: data[s][0] for s in ("train", "val", "test")}
    ys = {s: data[s][1] for s in ("train", "val", "test")}
    with torch.no_grad():
        u0 = front.learned(hs["train"][:64])
    gain = 1.0 / max(float(u0.abs().mean()), 1e-30)
    classifier, features, norm = parse_head(spec["head"])
    head = Head(classifier, features, u0.shape[1], u0.shape[2], len(data["classes"]), args.log_floor, norm)
    model = Model(front, head, gain)
    before = front.snapshot()

    lr = spec["lr"]
    if spec["frontend"] in LEARNED_LWVD:
        groups = front.layer.parameter_groups(lr, filter_lr_scale=spec["filter_lr_scale"])
    else:
        groups = [{"params": [p for p in front.parameters() if p.requires_grad], "lr": lr, "name": "frontend"}]
    groups = [g for g in groups if g["params"]] + [{"params": list(head.parameters()), "lr": lr, "name": "head"}]
    opt = torch.optim.Adam(groups, lr=lr)
    base = [g["lr"] for g in opt.param_groups]
    epochs = spec["epochs"]

    history, train_s, eval_s, train_cpu_s = [], 0.0, 0.0, 0.0
    n_train = len(ys["train"])
    gen = torch.Generator().manual_seed(1000 + spec["seed"])
    for epoch in range(epochs):
        factor = 1.0 if epoch < epochs * 0.5 else (1 / 3 if epoch < epochs * 0.75 else 1 / 6)
        for g, b in zip(opt.param_groups, base):
            g["lr"] = b * factor
        model.train()
        t0, c0 = time.perf_counter(), time.process_time()
        perm = torch.randperm(n_train, generator=gen)
        losses = []
        for step, i in enumerate(range(0, n_train, args.batch)):
            if args.max_steps and step >= args.max_steps:
                break
            idx = perm[i : i + args.batch]
            if len(idx) < 2:  # BatchNorm needs two examples
                continue
            loss = nn.functional.cross_entropy(model(hs["train"][idx]), ys["train"][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        train_s += time.perf_counter() - t0
        train_cpu_s += time.process_time() - c0
        t1 = time.perf_counter()
        val = accuracy(model, hs["val"], ys["val"], args.batch * 4)
        # Only the first epoch of best validation accuracy is reported: test only when val improves.
        improved = all(val > h["val"] for h in history)
        test = accuracy(model, hs["test"], ys["test"], args.batch * 4) if improved else None
        eval_s += time.perf_counter() - t1
        history.append(dict(epoch=epoch + 1, loss=float(np.mean(losses)) if losses else float("nan"), val=val, test=test))
        if args.progress is not None:
            args.progress.set_postfix_str(f"{spec['label']} ep {epoch + 1}/{epochs} val {val:.1f}", refresh=True)
    best = max(history, key=lambda r: r["val"]) if history else None  # max() keeps the first of ties
    after = front.snapshot()
    rec = dict(spec, best_epoch=best["epoch"], val=best["val"], test=best["test"], history=history,
               seconds_per_epoch=train_s / max(1, epochs), eval_seconds_per_epoch=eval_s / max(1, epochs),
               cpu_seconds_per_epoch=train_cpu_s / max(1, epochs),
               fixed_stage_seconds=cache.get(key + ":seconds", 0.0), gain=gain, movement=movement(before, after),
               before={k: v.tolist() for k, v in before.items() if k != "weight"},
               after={k: v.tolist() for k, v in after.items() if k != "weight"})
    return rec


def parse_head(spec: str) -> tuple:
    """``classifier/features[/bn]`` -> (classifier, features, norm); ValueError naming ``--heads`` otherwise."""
    parts = spec.split("/")
    ok = len(parts) in (2, 3) and parts[0] in HEAD_CLASSIFIERS and parts[1] in HEAD_FEATURES and (len(parts) == 2 or parts[2] in HEAD_NORMS)
    if not ok:
        raise ValueError(f"--heads: {spec!r} is not classifier/features[/norm] with classifier in {HEAD_CLASSIFIERS}, "
                         f"features in {HEAD_FEATURES}, norm in {HEAD_NORMS}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def _batched(fn, x, batch):
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------- report

def _column(rec) -> str:
    if rec["frontend"] in LEARNED_LWVD and rec["filter_lr_scale"] != 1:
        return f"{rec['frontend']} (filters x{rec['filter_lr_scale']:g})"
    return rec["frontend"]


def write_report(runs: list, meta: dict, out: Path, plot: bool = True) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.json").write_text(json.dumps(dict(meta=meta, runs=runs), indent=1))
    columns = []
    for r in runs:
        if _column(r) not in columns:
            columns.append(_column(r))
    rows = []
    for r in runs:
        k = (r["head"], r["lr"])
        if k not in rows:
            rows.append(k)
    lines = [f"Test accuracy (%) at the epoch of best validation accuracy, mean ± std over seeds (n = seeds run). {meta['data']}.", ""]
    lines.append("| head | features | lr | " + " | ".join(columns) + " |")
    lines.append("|---|---|---|" + "---|" * len(columns))
    for head, lr in rows:
        cls, feat, norm = parse_head(head)
        cells = []
        for col in columns:
            accs = [r["test"] for r in runs if r["head"] == head and r["lr"] == lr and _column(r) == col]
            if not accs:
                cells.append("—")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.1f} (n=1)")
            else:
                cells.append(f"{np.mean(accs):.1f} ± {np.std(accs, ddof=1):.1f} (n={len(accs)})")
        lines.append(f"| {cls} | {HEAD_TITLES[feat]}{' + BatchNorm' if norm else ''} | {lr:g} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per training epoch (wall, mean over runs; the machine's load is in the header):", ""]
    lines.append("| front end | s / epoch (train) | s / epoch (eval val+test) | one-off fixed stage s |")
    lines.append("|---|---|---|---|")
    for col in columns:
        rs = [r for r in runs if _column(r) == col]
        lines.append(f"| {col} | {np.mean([r['seconds_per_epoch'] for r in rs]):.2f} | "
                     f"{np.mean([r['eval_seconds_per_epoch'] for r in rs]):.2f} | {rs[0]['fixed_stage_seconds']:.1f} |")
    lines += ["", "Filter movement, init -> best... final epoch (mean over seeds):", ""]
    keys = ["center_shift_over_spacing_mean", "center_shift_over_spacing_max", "abs_rho_mean", "abs_rho_max",
            "area_ratio_before_mean", "area_ratio_mean", "area_ratio_min", "sub_heisenberg_filters",
            "time_spread_s_ratio_geomean", "time_spread_s_ratio_min", "time_spread_s_ratio_max",
            "bandwidth_hz_ratio_geomean", "weight_rel_change"]
    lines.append("| front end | head | lr | " + " | ".join(keys) + " |")
    lines.append("|---|---|---|" + "---|" * len(keys))
    for col in columns:
        for head, lr in rows:
            rs = [r for r in runs if _column(r) == col and r["head"] == head and r["lr"] == lr]
            if not rs or not rs[0]["movement"]:
                continue
            cells = []
            for k in keys:
                vals = [r["movement"][k] for r in rs if k in r["movement"]]
                cells.append(f"{np.mean(vals):.3g}" if vals else "")
            lines.append(f"| {col} | {head} | {lr:g} | " + " | ".join(cells) + " |")
    text = "\n".join(lines).replace("init -> best... final epoch", "init -> final epoch") + "\n"
    header = (f"# Accuracy benchmark\n\ncommand: `{meta['command']}`  \nmachine: {meta['machine']}  \n"
              f"started {meta['started']}, load average at start {meta['loadavg_start']}, now {meta.get('loadavg_now', '')}; "
              f"elapsed {meta.get('elapsed_s', 0):.0f} s; {len(runs)} runs\n\n")
    (out / "table.md").write_text(header + text)
    if plot:
        try:
            _plot(runs, columns, rows, out / "accuracy.png", meta)
        except Exception as e:  # matplotlib missing or a plotting problem must not lose the table
            print(f"plot skipped: {type(e).__name__}: {e}", file=sys.stderr)
    return header + text


def _plot(runs, columns, rows, path, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lwvd_cuda import LWVD
    from lwvd_cuda.plotting import plot_filters

    lw = [r for r in runs if r["frontend"] in LEARNED_LWVD]
    fig, axes = plt.subplots(1, 3 if lw else 1, figsize=(16 if lw else 8, 4.5), squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(1, len(columns))
    for j, col in enumerate(columns):
        means, errs = [], []
        for head, lr in rows:
            accs = [r["test"] for r in runs if r["head"] == head and r["lr"] == lr and _column(r) == col]
            means.append(np.mean(accs) if accs else np.nan)
            errs.append(np.std(accs, ddof=1) if len(accs) > 1 else 0.0)
        ax.bar(np.arange(len(rows)) + j * width, means, width, yerr=errs, label=col, capsize=2)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    # Head specs are long (nonlinear/pool_log/bn): slanted labels keep seven of them readable.
    ax.set_xticklabels([f"{h}\nlr {lr:g}" for h, lr in rows], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title("accuracy per head and front end")
    if lw:
        rec = lw[0]
        layer = LWVD(meta["sample_rate"], meta["n_filters"], n_fft=meta["n_fft"], hop_length=meta["hop"],
                     f_min=meta["f_min"], f_max=meta["f_max"], window_seconds=meta["window"]).double()
        for ax, key, title in ((axes[0, 1], "before", "LWVD at init"), (axes[0, 2], "after", f"learned ({_column(rec)}, {rec['head']}, seed {rec['seed']})")):
            s = rec[key]
            layer.set_filters(s["center_hz"], s["time_spread_s"], s["bandwidth_hz"], s["rho"])
            plot_filters(layer, ax=ax, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main

def _floats(s):
    return [float(v) for v in s.split(",") if v]


def _ints(s):
    return [int(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="digits", help="'digits' (espeak-ng spoken digits) or 'folder:PATH'")
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--voices", default="24,8,12", help="digits: voice variants in train,val,test")
    p.add_argument("--renditions", type=int, default=2, help="digits: clips per voice and digit")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--n-filters", type=int, default=40)
    p.add_argument("--n-fft", type=int, default=128)
    p.add_argument("--hop", type=int, default=80)
    p.add_argument("--window", type=float, default=0.016, help="Gaussian window length, s (std = window / 6)")
    p.add_argument("--f-min", type=float, default=0.0)
    p.add_argument("--f-max", type=float, default=None)
    p.add_argument("--frontends", default=None, help=f"comma list of {fe_lib.FRONTENDS} (default spectrogram,lwvd,mel; --smoke: all)")
    p.add_argument("--heads", default=None, help=f"comma list of classifier/features (default {DEFAULT_HEADS}); classifiers {HEAD_CLASSIFIERS}, features {HEAD_FEATURES}")
    p.add_argument("--lrs", default="1e-3")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=0, help="cap on steps per epoch (0: all)")
    p.add_argument("--filter-lr-scales", default="1", help="LWVD filter lr multipliers (parameter_groups); '1' = the paper's single rate "
                   "(the default: at lr 5e-3 x10 and even x1 read below x0.1 on the spoken digits, README 'Does it learn?')")
    p.add_argument("--log-floor", type=float, default=1e-4, help="floor of log / PCEN, relative to the front end's mean energy at init")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="results/accuracy")
    p.add_argument("--smoke", action="store_true", help="tiny: every front end and head, a few steps (synthetic clips if espeak-ng is missing)")
    p.add_argument("--full-grid", action="store_true", help="the paper's grid: all front ends, 7 heads, lrs 2e-4,1e-3,5e-3, 3 seeds, 100 epochs, 40 filters")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resume", action="store_true", help="keep the runs already in OUT/runs.json and run only the missing ones")
    p.add_argument("--merge", default=None, help="comma list of output folders: merge their runs.json into one report in --out (runs nothing)")
    args = p.parse_args(argv)
    if args.full_grid:
        args.frontends = args.frontends or ",".join(fe_lib.FRONTENDS)
        args.heads = args.heads or ",".join(f"{c}/{f}" for c in ("linear", "nonlinear") for f in HEAD_FEATURES) + ",joint/pool_log"
        args.lrs, args.seeds, args.epochs, args.filter_lr_scales = "2e-4,1e-3,5e-3", "0,1,2", 100, "1,10"
        args.voices, args.renditions = "60,15,26", 3
    if args.smoke:
        args.frontends = args.frontends or ",".join(fe_lib.FRONTENDS)
        args.heads = args.heads or "linear/log_pool,nonlinear/pcen_pool,joint/pool_log"
        args.lrs, args.seeds, args.epochs, args.max_steps = "1e-3", "0", 2, 2
        args.voices, args.renditions, args.n_filters, args.seconds = "2,1,1", 1, 8, 0.5
        args.filter_lr_scales = "1,10"
    args.frontends = args.frontends or "spectrogram,lwvd,mel"
    args.heads = args.heads or DEFAULT_HEADS
    args.f_max = args.sample_rate / 2 if args.f_max is None else args.f_max
    return args


def load_data(args) -> tuple[dict, str]:
    if args.data == "digits":
        v = _ints(args.voices)
        ds = speech_digits.spoken_digits(args.sample_rate, args.seconds, tuple(v), args.renditions, args.data_seed,
                                         synthetic_fallback=args.smoke, progress=not args.no_progress)
    elif args.data.startswith("folder:"):
        ds = speech_digits.audio_folder(args.data[len("folder:") :], args.sample_rate, args.seconds, args.data_seed)
    else:
        raise ValueError(f"--data must be 'digits' or 'folder:PATH', got {args.data!r}")

    def prep(x):
        x = torch.from_numpy(np.ascontiguousarray(x)).float()
        x = x - x.mean(-1, keepdim=True)
        return x / x.abs().amax(-1, keepdim=True).clamp_min(1e-12)

    data = {s: (prep(getattr(ds, f"x_{s}")), torch.from_numpy(getattr(ds, f"y_{s}"))) for s in ("train", "val", "test")}
    data["classes"] = ds.classes
    return data, f"{ds.description}; {ds.sizes()}"


def merge(folders: list, out: Path) -> dict:
    """One report from several runs of the command (e.g. run in parallel or in phases)."""
    parts = [json.loads((Path(f) / "runs.json").read_text()) for f in folders]
    meta = dict(parts[0]["meta"])
    meta["command"] = " ; ".join(p["meta"]["command"] for p in parts)
    meta["elapsed_s"] = sum(p["meta"].get("elapsed_s", 0.0) for p in parts)
    meta["loadavg_now"] = "; ".join(p["meta"].get("loadavg_now", "") for p in parts)
    runs = [r for p in parts for r in p["runs"]]
    print(write_report(runs, meta, out, plot=True))
    return dict(runs=runs, meta=meta)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.merge:
        return merge([f for f in args.merge.split(",") if f], Path(args.out))
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="lwvd_cuda: running the pure-PyTorch reference")
    started = time.time()
    data, description = load_data(args)
    names = [n for n in args.frontends.split(",") if n]
    skipped = {}
    if "leaf" in names and fe_lib.leaf_available() is not None:
        skipped["leaf"] = fe_lib.leaf_available()
        names.remove("leaf")
    heads = [h for h in args.heads.split(",") if h]
    for h in heads:
        parse_head(h)
    specs = []
    for seed in _ints(args.seeds):  # seeds outermost: an interrupted run has every config at fewer seeds
        for head in heads:
            for name in names:
                for lr in _floats(args.lrs):
                    for scale in (_floats(args.filter_lr_scales) if name in LEARNED_LWVD else [1.0]):
                        spec = dict(frontend=name, head=head, lr=lr, seed=seed, filter_lr_scale=scale, epochs=args.epochs)
                        spec["label"] = f"{name}{'' if scale == 1 else f'x{scale:g}'} {head} lr {lr:g} s{seed}"
                        specs.append(spec)
    meta = dict(command="python -m benchmarks.accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
                machine=f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}, "
                        f"{torch.get_num_threads()} threads, CPU only",
                started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), loadavg_start=_loadavg(),
                data=description, skipped=skipped, sample_rate=args.sample_rate, n_filters=args.n_filters,
                n_fft=args.n_fft, hop=args.hop, window=args.window, f_min=args.f_min, f_max=args.f_max,
                log_floor=args.log_floor, epochs=args.epochs, batch=args.batch)
    out = Path(args.out)
    runs, cache = [], {}
    if args.resume and (out / "runs.json").exists():
        previous = json.loads((out / "runs.json").read_text())
        runs = previous["runs"]
        meta["command"] = previous["meta"]["command"] + " ; then " + meta["command"]
        meta["started"], meta["loadavg_start"] = previous["meta"]["started"], previous["meta"]["loadavg_start"]
        started -= previous["meta"].get("elapsed_s", 0.0)
        done = {r["label"] for r in runs}
        specs = [s for s in specs if s["label"] not in done]
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(specs), desc="accuracy runs", unit="run")
    args.progress = bar
    for spec in specs:
        runs.append(run_one(spec, data, args, cache))
        meta.update(loadavg_now=_loadavg(), elapsed_s=time.time() - started)
        write_report(runs, meta, out, plot=False)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    text = write_report(runs, meta, out, plot=True)
    if skipped:
        text += "\nSkipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + "\n"
    print(text)
    return dict(runs=runs, meta=meta)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
