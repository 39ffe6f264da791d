"""Forward+backward time and peak memory of the mgll-loss backends and the baselines of docs/backends.md.

    python -m benchmarks.run --preset small   # the batch sizes people train with (B=32..2048), eager and compiled
    python -m benchmarks.run                  # CPU presets: time sweep + memory sweep (tens of minutes)
    python -m benchmarks.run --preset quick   # seconds: a smoke run of every method
    python -m benchmarks.run --preset gpu     # on CUDA: larger sizes, and the triton backend

Times are medians (and 20th / 80th percentiles) of interleaved runs in one process, so every
method sees the same machine state. ``ops`` is the number of top-level ATen operators of one
forward+backward (torch profiler): the proxy for kernel-launch overhead on a GPU. Peak memory is
measured in a fresh subprocess per point: the high-water mark of resident memory above the
inputs on CPU, ``torch.cuda.max_memory_allocated`` on GPU. Writes ``results.csv``, ``time.png``
and ``memory.png`` into ``--out``. Methods: ``naive``, ``clip`` (open_clip ``ClipLoss`` x G),
``gemms`` (see :mod:`benchmarks.baselines`), a backend name (``auto`` is ``MGLLLoss()``), and
``compiled`` (``torch.compile(MGLLLoss())``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import mgll_loss
from benchmarks import baselines

FIELDS = [
    "backend",
    "op",
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
    "ops",
    "version",
]

Point = tuple[int, int, int]
"""A timed problem size: (B, D, G)."""


@dataclass(frozen=True)
class Preset:
    """A sweep: problem sizes to time (with every method) and batch sizes to measure memory at (per method).

    ``repeats`` interleaved rounds at B <= 256, fewer above (down to 5), so large points stay affordable.
    """

    time_points: tuple[Point, ...]
    memory_batches: tuple[int, ...]
    memory_dim: int
    methods: tuple[str, ...]
    repeats: int
    levels: int = 3

    def rounds(self, batch: int) -> int:
        """Interleaved rounds at batch size ``batch``."""
        return max(5, self.repeats * 256 // max(256, batch))


def points(batches: Sequence[int], dim: int, levels: int = 3) -> tuple[Point, ...]:
    """(B, dim, levels) for every B in ``batches``."""
    return tuple((batch, dim, levels) for batch in batches)


PRESETS = {
    "small": Preset(
        points((32, 128, 256), 512) + ((32, 768, 2),) + points((1024, 2048), 512),
        (),
        0,
        ("naive", "clip", "gemms", "auto", "compiled", "batched", "dense"),
        repeats=100,
    ),
    "cpu": Preset(
        points((256, 512, 1024, 2048, 4096), 512),
        (1024, 4096, 8192, 16384, 32768),
        256,
        ("naive", "clip", "gemms", "batched", "dense", "chunked"),
        repeats=7,
    ),
    "gpu": Preset(
        points((1024, 4096, 16384, 32768), 768),
        (16384, 65536, 262144, 1048576),
        768,
        ("naive", "clip", "gemms", "dense", "chunked", "triton"),
        repeats=10,
    ),
    "quick": Preset(
        points((32, 64), 32), (64,), 32, ("naive", "clip", "gemms", "batched", "dense", "chunked"), repeats=3
    ),
}

# beyond these many bytes of B x N x G logits a method is not run (it would exhaust memory)
_MATERIALISING = {
    "naive": 6,
    "clip": 4,
    "gemms": 2,
    "auto": 8,
    "compiled": 8,
    "batched": 8,
    "dense": 2,
    "chunked": 0,
    "triton": 0,
    "inf-cl": 0,
}


def make_inputs(batch: int, dim: int, levels: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Unit-norm features, a logit scale, and class ids with duplicates (batch / 8 classes) per level."""
    gen = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device, dtype).requires_grad_()
    texts = F.normalize(torch.randn(levels, batch, dim, generator=gen), dim=-1).to(device, dtype).requires_grad_()
    scale = torch.tensor(14.3, device=device, requires_grad=True)
    labels = [torch.randint(0, max(1, batch // 8), (batch,), generator=gen).to(device) for _ in range(levels)]
    return images, texts, scale, labels


def method(name: str, labels: list[Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The forward of ``name`` on fixed labels: a callable (images, texts, scale) -> scalar loss."""
    if name == "naive":
        return baselines.naive_mgll(list(labels))
    if name == "clip":
        return baselines.open_clip_per_level()
    if name == "gemms":
        return baselines.bare_gemms()
    if name == "inf-cl":
        return baselines.inf_cl_per_level()
    loss: Callable = mgll_loss.MGLLLoss(backend="auto" if name == "compiled" else name)
    if name == "compiled":  # a fresh cache: compiled graphs of earlier points would count towards the recompile limit
        torch._dynamo.reset()
        loss = torch.compile(loss)
    return lambda images, texts, scale: loss(images, texts, scale, labels=list(labels))


def fits(name: str, batch: int, levels: int, limit_bytes: float) -> bool:
    """Whether ``name`` materialising its B x B x G logits (times a factor) stays within ``limit_bytes``."""
    return _MATERIALISING[name] * batch * batch * levels * 4 <= limit_bytes


def available(name: str, device: str) -> bool:
    if name == "clip":
        return _importable("open_clip")
    if name == "triton":
        return device == "cuda" and _importable("triton")
    if name == "inf-cl":
        return device == "cuda" and _importable("inf_cl")
    return True


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(fn: Callable, inputs: tuple[Tensor, Tensor, Tensor]) -> None:
    """One forward+backward; clears the gradients first."""
    for tensor in inputs:
        tensor.grad = None
    fn(*inputs).backward()


def time_methods(
    names: Sequence[str],
    batch: int,
    dim: int,
    levels: int,
    device: str,
    repeats: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Milliseconds of ``repeats`` forward+backward runs per method, interleaved round-robin; and op counts."""
    images, texts, scale, labels = make_inputs(batch, dim, levels, device, dtype)
    inputs = (images, texts, scale)
    fns = {name: method(name, labels) for name in names}
    for fn in fns.values():  # warm-up (and compilation)
        step(fn, inputs)
        step(fn, inputs)
    ops = {name: op_count(fn, inputs) for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            step(fn, inputs)
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return times, ops


def op_count(fn: Callable, inputs: tuple[Tensor, Tensor, Tensor]) -> int:
    """Top-level ATen operators of one forward+backward (those not called by another ATen operator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(fn, inputs)
    events = prof.events()
    return sum(
        1
        for e in events
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def peak_memory_mb(name: str, batch: int, dim: int, levels: int, device: str) -> tuple[float, float]:
    """(peak MB above the inputs, milliseconds) of one forward+backward, in a fresh subprocess."""
    command = [sys.executable, "-m", "benchmarks.run", "--memory-probe", json.dumps([name, batch, dim, levels, device])]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    return probe["peak_mb"], probe["ms"]


def _memory_probe(spec: str) -> None:
    name, batch, dim, levels, device = json.loads(spec)
    warm = make_inputs(8, dim, levels, device, torch.float32)
    step(method(name, warm[3]), warm[:3])  # load kernels and libraries outside the measurement
    images, texts, scale, labels = make_inputs(batch, dim, levels, device, torch.float32)
    fn = method(name, labels)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_peak_resident()
        before = _resident_bytes()
    start = time.perf_counter()
    step(fn, (images, texts, scale))
    _sync(device)
    elapsed = 1e3 * (time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _peak_resident_bytes() - before
    print(json.dumps({"peak_mb": max(0, peak) / 2**20, "ms": elapsed}))


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_resident() -> None:
    """Reset the kernel's resident high-water mark (Linux >= 4.0), so the peak is the measured call's."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _row(
    name: str,
    batch: int,
    dim: int,
    levels: int,
    device: str,
    times: list[float],
    peak_mb: float | None,
    ops: int | None = None,
    dtype: str = "float32",
) -> dict:
    ordered = sorted(times)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return dict(
        backend=name,
        op="forward+backward",
        B=batch,
        D=dim,
        G=levels,
        dtype=dtype,
        device=device,
        median_ms=round(statistics.median(times), 3),
        p20_ms=round(quantile(0.2), 3),
        p80_ms=round(quantile(0.8), 3),
        runs=len(times),
        peak_mb="" if peak_mb is None else round(peak_mb, 1),
        ops="" if ops is None else ops,
        version=mgll_loss.__version__,
    )


def run(preset: Preset, device: str, out: Path, memory_limit: float) -> list[dict]:
    """Time sweep, then memory sweep; returns the CSV rows."""
    names = [n for n in preset.methods if available(n, device)]
    rows = []
    for batch, dim, levels in preset.time_points:
        runnable = [n for n in names if fits(n, batch, levels, memory_limit)]
        times, ops = time_methods(runnable, batch, dim, levels, device, preset.rounds(batch))
        for name in runnable:
            rows.append(_row(name, batch, dim, levels, device, times[name], None, ops[name]))
            print(_describe(rows[-1]), flush=True)
    for batch in preset.memory_batches:
        for name in names:
            if name in ("gemms",) or not fits(name, batch, preset.levels, memory_limit):
                continue
            peak, ms = peak_memory_mb(name, batch, preset.memory_dim, preset.levels, device)
            rows.append(_row(name, batch, preset.memory_dim, preset.levels, device, [ms], peak))
            print(_describe(rows[-1]), flush=True)
    write(rows, out)
    print(summary(rows), flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    """A Markdown table of the timed points: MGLLLoss (``auto``) against ``ClipLoss`` x G and the naive formulas."""
    timed = [r for r in rows if r["peak_mb"] == ""]
    lines = [
        "| D, G | B | MGLLLoss | compiled | ClipLoss x G | naive | MGLL / ClipLoss x G | naive / MGLL | "
        "compiled / eager | ops (MGLL, ClipLoss x G) |",
        "|---|---:|" + "---:|" * 8,
    ]
    for point in dict.fromkeys((r["D"], r["G"], r["B"]) for r in timed):
        ms = {r["backend"]: r for r in timed if (r["D"], r["G"], r["B"]) == point}
        if "auto" not in ms:
            continue
        auto = float(ms["auto"]["median_ms"])
        ops = f"{ms['auto']['ops']}, {ms['clip']['ops'] if 'clip' in ms else '-'}"
        lines.append(
            f"| {point[0]}, {point[1]} | {point[2]} | {_number(auto)} ms | {_cell(ms, 'compiled')} ms | "
            f"{_cell(ms, 'clip')} ms | {_cell(ms, 'naive')} ms | {_cell(ms, 'clip', lambda c, a=auto: a / c, 2)} | "
            f"{_cell(ms, 'naive', lambda n, a=auto: n / a, 2)} | {_cell(ms, 'compiled', lambda c, a=auto: c / a, 2)} | "
            f"{ops} |"
        )
    return "\n".join(lines)


def _cell(
    rows: dict[str, dict[str, Any]], name: str, value: Callable[[float], float] = lambda x: x, digits: int = 3
) -> str:
    """``value`` of the median time of backend ``name`` in ``rows``, or ``-`` where it was not measured."""
    return _number(value(float(rows[name]["median_ms"])), digits) if name in rows else "-"


def _number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, without an exponent."""
    return f"{value:.{digits}g}" if value < 10**digits else f"{value:.0f}"


def write(rows: list[dict], out: Path) -> None:
    """``results.csv`` and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out)


def _describe(row: dict) -> str:
    memory = "" if row["peak_mb"] == "" else f"  peak {row['peak_mb']:>9} MB"
    ops = "" if row["ops"] == "" else f"  {row['ops']} ops"
    return (
        f"{row['backend']:>8}  B={row['B']:>7} D={row['D']} G={row['G']} {row['dtype']}  median "
        f"{row['median_ms']:>10} ms (p20 {row['p20_ms']}, p80 {row['p80_ms']}, {row['runs']} runs){ops}{memory}"
    )


def plot(rows: list[dict], out: Path) -> None:
    """time.png (time sweep) and memory.png (memory sweep), log-log, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for filename, key, select, label in (
        ("time.png", "median_ms", lambda r: r["peak_mb"] == "", "forward+backward time (ms)"),
        ("memory.png", "peak_mb", lambda r: r["peak_mb"] != "", "peak memory above inputs (MB)"),
    ):
        chosen = [r for r in rows if select(r)]
        if not chosen:
            continue
        figure, axes = plt.subplots(figsize=(6, 4))
        configs = list(dict.fromkeys((r["D"], r["G"], r["dtype"]) for r in chosen))
        for name, config in ((n, c) for c in configs for n in dict.fromkeys(r["backend"] for r in chosen)):
            xy = sorted(
                (r["B"], float(r[key]))
                for r in chosen
                if r["backend"] == name and (r["D"], r["G"], r["dtype"]) == config and float(r[key]) > 0
            )
            if xy:  # log axes: a peak of 0 MB (too small to see) is left out
                suffix = f" (D={config[0]}, G={config[1]}, {config[2]})" if len(configs) > 1 else ""
                axes.plot(*zip(*xy, strict=True), marker="o", label=name + suffix)
        first = chosen[0]
        title = f"G={first['G']}, D={first['D']}, {first['dtype']}, " if len(configs) == 1 else ""
        axes.set(xscale="log", yscale="log", xlabel="batch size B", ylabel=label, title=title + first["device"])
        if axes.get_lines():
            axes.legend()
        axes.grid(True, which="both", alpha=0.3)
        figure.tight_layout()
        figure.savefig(out / filename, dpi=120)
        plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=12.0,
        help="skip a method whose materialised logits would exceed this (default 12)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        _memory_probe(args.memory_probe)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    run(PRESETS[args.preset], args.device, args.out, args.memory_limit_gb * 2**30)


if __name__ == "__main__":
    main()
