"""Peak memory and time of one effective training step: full batch vs feature-cached vs naive accumulation.

    python -m benchmarks.accumulation                          # B=512 as 1x512, 4x128, 16x32 (CPU, minutes)
    python -m benchmarks.accumulation --batch 64 --splits 1,4  # smaller

One effective step of a small open_clip ViT-CLIP (through ``MultiGranularOpenCLIP``, G=3 levels of
text, MGLLLoss with class-id labels) on B images, measured three ways:

- ``full``: ``loss(**model(all B)).backward()``, the reference objective;
- ``accumulate``: :func:`mgll_loss.accumulate_step` over K micro-batches of B/K (the same
  objective and gradients; one extra forward per micro-batch);
- ``naive``: ``(loss(**model(micro-batch)) / K).backward()`` per micro-batch, i.e. plain gradient
  accumulation, which changes the objective (each micro-batch only sees its own negatives).

Every configuration runs in a fresh subprocess: a warm-up step on 8 images loads kernels and
allocator pools, then the resident-set high-water mark is reset (``/proc/self/clear_refs``) and
the peak above the resident memory just before the step is recorded (model, optimizer-free
gradients and inputs already resident, so the number is what the step itself adds:
activations, cached features, gradients). Time is the median of ``--repeats`` steps in that
process, with ``--threads`` torch threads (default 1: on a shared machine more threads mostly add
noise). Writes ``accumulation.csv`` and ``accumulation.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import mgll_loss
from benchmarks.run import _peak_resident_bytes, _reset_peak_resident, _resident_bytes
from mgll_loss import MGLLLoss, accumulate_step

FIELDS = [
    "method",
    "micro_batches",
    "micro_batch",
    "B",
    "D",
    "G",
    "dtype",
    "device",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "runs",
    "peak_mb",
    "version",
]
LEVELS, EMBED, IMAGE, CONTEXT = 3, 64, 64, 32


def tiny_model() -> torch.nn.Module:
    """A 2-layer ViT (64x64 images, 8x8 patches) and a 2-layer text transformer, width 64, D=64 (~0.9M parameters)."""
    import open_clip

    from mgll_loss.adapters.open_clip import MultiGranularOpenCLIP

    torch.manual_seed(0)
    return MultiGranularOpenCLIP(
        open_clip.CLIP(
            embed_dim=EMBED,
            vision_cfg=dict(layers=2, width=64, head_width=16, patch_size=8, image_size=IMAGE),
            text_cfg=dict(context_length=CONTEXT, vocab_size=49408, width=64, heads=4, layers=2),
        )
    )


def make_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, IMAGE, IMAGE, generator=g)
    texts = torch.randint(1, 49407, (LEVELS, batch, CONTEXT), generator=g)
    labels = [torch.randint(0, classes, (batch,), generator=g) for classes in (2, 8, 32)]
    return images, texts, labels


def effective_step(
    method: str,
    micro_batches: int,
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    labels: list[torch.Tensor],
) -> Callable[[], None]:
    """One effective step of ``method`` on the whole batch, as a closure."""
    size = -(-images.shape[0] // micro_batches)
    chunks = [dict(images=i, texts=t) for i, t in zip(images.split(size), texts.split(size, dim=1), strict=True)]

    def full() -> None:
        loss_fn(**model(images, texts), labels=labels).backward()

    def accumulate() -> None:
        accumulate_step(model, loss_fn, chunks, labels=labels)

    def naive() -> None:
        start = 0
        for chunk in chunks:
            rows = slice(start, start + chunk["images"].shape[0])
            start = rows.stop
            (loss_fn(**model(**chunk), labels=[y[rows] for y in labels]) / len(chunks)).backward()

    return {"full": full, "accumulate": accumulate, "naive": naive}[method]


def _probe(spec: str) -> None:
    """Subprocess body: warm up, then measure peak memory of the first step and time ``repeats`` steps."""
    method, micro_batches, batch, repeats, threads = json.loads(spec)
    torch.set_num_threads(threads)
    model, loss_fn = tiny_model(), MGLLLoss()
    effective_step(method, min(micro_batches, 2), model, loss_fn, *make_batch(8))()
    model.zero_grad(set_to_none=False)  # gradient buffers stay allocated: they are not the step's cost
    step = effective_step(method, micro_batches, model, loss_fn, *make_batch(batch))
    times, peak = [], 0
    for _ in range(repeats):
        _reset_peak_resident()
        before = _resident_bytes()
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
        peak = max(peak, _peak_resident_bytes() - before)
        model.zero_grad(set_to_none=False)
    print(json.dumps({"times": times, "peak_mb": max(0, peak) / 2**20}))


def measure(method: str, micro_batches: int, batch: int, repeats: int, threads: int) -> dict:
    spec = json.dumps([method, micro_batches, batch, repeats, threads])
    command = [sys.executable, "-m", "benchmarks.accumulation", "--probe", spec]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    times = sorted(probe["times"])

    def quantile(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))]

    return dict(
        method=method,
        micro_batches=micro_batches,
        micro_batch=-(-batch // micro_batches),
        B=batch,
        D=EMBED,
        G=LEVELS,
        dtype="float32",
        device="cpu",
        median_ms=round(statistics.median(times), 1),
        p20_ms=round(quantile(0.2), 1),
        p80_ms=round(quantile(0.8), 1),
        runs=len(times),
        peak_mb=round(probe["peak_mb"], 1),
        version=mgll_loss.__version__,
    )


def configurations(splits: Sequence[int]) -> list[tuple[str, int]]:
    """full once; accumulate for every K; naive for every K > 1 (with K = 1 it is the full step)."""
    return [("full", 1)] + [("accumulate", k) for k in splits] + [("naive", k) for k in splits if k > 1]


def plot(rows: list[dict], path: Path) -> None:
    """Two bar charts side by side: peak memory and time per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['method']}\n{r['micro_batches']}x{r['micro_batch']}" for r in rows]
    colours = {"full": "tab:gray", "accumulate": "tab:blue", "naive": "tab:orange"}
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, key, label in (
        (axes[0], "peak_mb", "peak memory above the inputs (MB)"),
        (axes[1], "median_ms", "time of one effective step (ms)"),
    ):
        values = [float(r[key]) for r in rows]
        spread = None  # time: p20..p80 as error bars
        if key == "median_ms":
            spread = [
                [v - float(r["p20_ms"]) for v, r in zip(values, rows, strict=True)],
                [float(r["p80_ms"]) - v for v, r in zip(values, rows, strict=True)],
            ]
        axis.bar(names, values, yerr=spread, capsize=3, color=[colours[r["method"]] for r in rows])
        axis.set(ylabel=label)
        axis.tick_params(axis="x", labelsize=8)
        axis.grid(True, axis="y", alpha=0.3)
    first = rows[0]
    figure.suptitle(
        f"one effective step, B={first['B']}, G={first['G']}, D={first['D']}, {first['dtype']}, "
        f"{first['device']} (naive: a different objective)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512, help="effective batch size B")
    parser.add_argument("--splits", default="1,4,16", help="numbers of micro-batches K, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steadier times on a shared machine)"
    )
    parser.add_argument("--out", default="benchmarks/results", help="folder for accumulation.csv and accumulation.png")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        _probe(args.probe)
        return []
    rows = []
    for method, micro_batches in configurations([int(k) for k in args.splits.split(",")]):
        rows.append(measure(method, micro_batches, args.batch, args.repeats, args.threads))
        row = rows[-1]
        print(
            f"{method:>10} {micro_batches:>3} x {row['micro_batch']:<4} peak {row['peak_mb']:>8} MB   "
            f"median {row['median_ms']:>9} ms (p20 {row['p20_ms']}, p80 {row['p80_ms']})",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "accumulation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out / "accumulation.png")
    return rows


if __name__ == "__main__":
    main()
