"""``make gpu-check``: everything a CUDA machine must confirm, in one run of a few minutes.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu-check     # on one CUDA device
    python -m benchmarks.gpu_check --dry-run --out /tmp/gpu-check          # CPU, tiny sizes, TRITON_INTERPRET=1

Four stages, each printed as it runs and summarised in ``summary.json``:

1. **parity**: every backend (batched, dense, chunked, triton) on the device against the plain
   float64 reference of ``tests/reference.py`` (on CPU), for the multi-level cases and option sets
   of the CPU tests, in float32, bfloat16 and float16, with the tolerance table of the CPU tests
   (``tests/parity_cases.py``, ``tests/helpers.py``).
2. **syncs**: forward+backward of every backend under ``torch.cuda.set_sync_debug_mode("error")``
   (class ids, multi-hot labels, explicit targets, text masks, a bias; with and without the
   masks and the bias). No backend may synchronise.
3. **compile**: ``torch.compile(MGLLLoss(), fullgraph=True)`` against eager on the device.
4. **bench**: forward+backward time, G=3, D=768, float32, B from 32 up to the largest batch that
   runs within the time budget, against open_clip ``ClipLoss`` x 3, the naive formulas and Inf-CL
   (if ``inf_cl`` imports); ``results.csv``, ``time.png``.

The dry run runs the same code on CPU tensors at tiny sizes (the triton backend through the
Triton interpreter), so that the script cannot rot: the test suite runs it. Its stage 2 runs
the CPU tensors under the accelerator policy (:func:`mgll_loss.devices.accelerator_policy`) and
fails on any operator that would read a value on the host (:mod:`benchmarks.host_reads`), since
``set_sync_debug_mode`` needs CUDA. Exit status 1 if a parity, sync or compile check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BACKENDS = ("batched", "dense", "chunked", "triton")
DTYPES = ("float32", "bfloat16", "float16")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU tensors, tiny sizes, triton under the interpreter")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu-check"))
    parser.add_argument("--bench-budget-s", type=float, default=150.0, help="time budget of the benchmark stage")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    device = "cpu" if args.dry_run else "cuda"
    report: dict[str, Any] = {"device": _device_name(device), "dry_run": args.dry_run}
    started = time.perf_counter()
    report["parity"] = parity(device, args.dry_run)
    report["syncs"] = syncs(device)
    report["compile"] = compile_check(device)
    report["bench"] = bench(device, args.out, args.dry_run, args.bench_budget_s)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    failed = _failures(report)
    print(
        f"gpu-check on {report['device']}: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} "
        f"({report['seconds']} s); summary in {args.out / 'summary.json'}",
        flush=True,
    )
    return 1 if failed else 0


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"


def _failures(report: dict[str, Any]) -> list[str]:
    failed = [f"parity {key}" for key, value in report["parity"].items() if value != "ok"]
    failed += [f"{backend} syncs" for backend, value in report["syncs"].items() if value != "ok"]
    if report["compile"] != "ok":
        failed.append("compile")
    return failed


def _attempt(check: Callable[[], None]) -> str:
    """'ok', or the error in one line."""
    try:
        check()
    except Exception as error:  # noqa: BLE001 - every failure is reported, none stops the run
        traceback.print_exc()
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return "ok"


def parity(device: str, dry_run: bool) -> dict[str, str]:
    """Every backend x dtype: all cases and option sets against the float64 reference."""
    import torch

    from tests.parity_cases import BIAS_VALUE, MGLL_OPTIONS, MULTI_CASES, SCALES

    cases = ["G3_tensor_labels_mask"] if dry_run else MULTI_CASES
    options = MGLL_OPTIONS[:2] if dry_run else MGLL_OPTIONS
    results = {}
    for backend in BACKENDS:
        for dtype_name in DTYPES[:2] if dry_run else DTYPES:
            dtype = getattr(torch, dtype_name)

            def check(backend: str = backend, dtype: torch.dtype = dtype) -> None:
                for k, case in enumerate(cases):
                    for j, opts in enumerate(options):
                        bias = BIAS_VALUE if (k + j) % 2 else None
                        _parity_case(case, opts, SCALES[(k + j) % 3], bias, dtype, backend, device)

            key = f"{backend} {dtype_name}"
            results[key] = _attempt(check)
            print(f"parity {key}: {results[key]}", flush=True)
    return results


def _parity_case(
    case: str, opts: dict[str, Any], scale: float, bias: float | None, dtype: Any, backend: str, device: str
) -> None:
    import torch

    from mgll_loss import MGLLLoss
    from tests.helpers import TOL
    from tests.parity_cases import multi_level_case
    from tests.reference import ref_mgll

    image64, texts64, labels, targets, mask = multi_level_case(case)
    opts = dict(opts)
    levels = len(texts64)
    if "level_weights" in opts:
        opts["level_weights"] = opts["level_weights"][:levels]
    low = dtype in (torch.bfloat16, torch.float16)

    def leaf(x: Any, kind: Any, where: str = device) -> Any:
        if isinstance(x, (list, tuple)):
            return [leaf(t, kind, where) for t in x]
        return x.detach().to(where, kind).requires_grad_()

    def moved(values: Any) -> Any:
        if values is None or isinstance(values, torch.Tensor):
            return None if values is None else values.to(device)
        return [moved(v) for v in values]

    scalar_dtype = torch.float32 if low else dtype
    lib = [
        leaf(image64, dtype),
        leaf(texts64, dtype),
        leaf(torch.tensor(scale), scalar_dtype),
        None if bias is None else leaf(torch.tensor(bias), scalar_dtype),
    ]
    # the reference sees the library's (rounded) input values, in float64 on CPU
    ref = [None if x is None else leaf(x, torch.float64, "cpu") for x in lib]
    call = dict(labels=labels, targets=targets, text_mask=mask)
    out = MGLLLoss(backend=backend, **opts)(*lib, **{k: moved(v) for k, v in call.items()})
    want = sum(ref_mgll(*ref, **call, **opts).values())
    tol = TOL[dtype]
    torch.testing.assert_close(out.detach().cpu().double(), want.detach(), rtol=tol["loss_rtol"], atol=tol["loss_atol"])
    out.backward()
    want.backward()
    for got, expected in zip(_flat(lib), _flat(ref), strict=True):
        if got is None:
            continue
        want_grad = torch.zeros_like(expected) if expected.grad is None else expected.grad  # leaf unused
        size = max(1.0, float(want_grad.abs().max()))
        torch.testing.assert_close(
            got.grad.cpu().double(), want_grad, rtol=tol["grad_rtol"], atol=tol["grad_atol"] * size
        )


def _flat(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    return flat


def _sync_inputs(device: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    batch, dim = 64, 32
    images = F.normalize(torch.randn(batch, dim, generator=gen), dim=-1).to(device).requires_grad_()
    texts = F.normalize(torch.randn(3, batch, dim, generator=gen), dim=-1).to(device).requires_grad_()
    return dict(
        images=images,
        texts=texts,
        scale=torch.tensor(14.3, device=device, requires_grad=True),
        bias=torch.tensor(-2.5, device=device, requires_grad=True),
        labels=[
            torch.randint(0, 8, (batch,), generator=gen).to(device),
            (torch.rand(batch, 5, generator=gen) < 0.3).to(device),
            None,
        ],
        targets=[None, None, (torch.rand(batch, batch, generator=gen) < 0.1).float().to(device)],
        mask=(torch.rand(3, batch, generator=gen) > 0.2).to(device),
    )


def syncs(device: str) -> dict[str, str]:
    """Forward+backward of each backend without a host synchronisation.

    On CUDA under ``set_sync_debug_mode("error")``; on CPU (the dry run) under the accelerator
    policy, failing on any operator :func:`benchmarks.host_reads.host_read_reason` names.
    """

    from mgll_loss import MGLLLoss

    data = _sync_inputs(device)
    results = {}
    for backend in BACKENDS:
        loss = MGLLLoss(backend=backend, match="overlap")

        def check(loss: Any = loss) -> None:
            for bias, mask in ((data["bias"], data["mask"]), (None, None)):
                for leaf in (data["images"], data["texts"], data["scale"], data["bias"]):
                    leaf.grad = None
                args = (data["images"], data["texts"], data["scale"], bias)
                options = dict(labels=data["labels"], targets=data["targets"], text_mask=mask)
                loss(*args, **options)  # warm-up: allocations, kernel compilation, the first call's checks
                with _no_host_reads(device):
                    loss(*args, **options).backward()

        results[backend] = _attempt(check)
        print(f"syncs {backend}: {results[backend]}", flush=True)
    return results


@contextmanager
def _no_host_reads(device: str) -> Iterator[None]:
    """Raise if the body synchronises with the host (CUDA) or would (CPU tensors, accelerator policy)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
        return
    from benchmarks.host_reads import OperatorLog
    from mgll_loss.devices import accelerator_policy

    log = OperatorLog()
    with accelerator_policy(), log:
        yield
    if log.host_reads:
        raise RuntimeError(f"host reads: {sorted(set(log.host_reads))}")


def compile_check(device: str) -> str:
    """``torch.compile(MGLLLoss(), fullgraph=True)`` equals eager (values and gradients) on ``device``."""
    import torch

    from mgll_loss import MGLLLoss

    data = _sync_inputs(device)

    def run(fn: Any) -> list[Any]:
        leaves = [data[k].detach().clone().requires_grad_() for k in ("images", "texts", "scale", "bias")]
        out = fn(*leaves, labels=data["labels"], targets=data["targets"], text_mask=data["mask"])
        out.backward()
        return [out.detach()] + [leaf.grad for leaf in leaves]

    def check() -> None:
        torch._dynamo.reset()  # a fresh cache of compiled graphs (at most 8 per code object)
        loss = MGLLLoss(match="jaccard")
        for got, want in zip(run(torch.compile(loss, fullgraph=True)), run(loss), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    result = _attempt(check)
    print(f"compile: {result}", flush=True)
    return result


def bench(device: str, out: Path, dry_run: bool, budget_s: float) -> dict[str, Any]:
    """Time sweep at D=768, G=3 with doubling B until a round exceeds its share of the budget."""
    import torch

    from benchmarks import run

    if device == "cuda":
        _init_single_process_group()  # Inf-CL reads the torch.distributed world
    methods = ("auto", "compiled", "batched", "dense", "chunked", "triton", "clip", "naive", "inf-cl")
    if dry_run:  # the triton kernels through the interpreter; compiling is covered by the compile stage
        methods = tuple(n for n in methods if n != "compiled")
    names = [n for n in methods if run.available(n, device) or (dry_run and n == "triton")]
    dim, levels = (16, 3) if dry_run else (768, 3)
    batches = (8,) if dry_run else tuple(32 * 4**k for k in range(10))
    limit = 0.8 * (torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 2**30)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for batch in batches:
        runnable = [n for n in names if run.fits(n, batch, levels, limit)]
        if not runnable or time.perf_counter() - started > budget_s:
            break
        try:
            times, ops = run.time_methods(runnable, batch, dim, levels, device, 3 if dry_run else 10)
        except torch.OutOfMemoryError:
            break
        for name in runnable:
            rows.append(run._row(name, batch, dim, levels, device, times[name], None, ops[name]))
            print(run._describe(rows[-1]), flush=True)
        if max(min(t) for t in times.values()) * 13 / 1e3 > budget_s / 4:  # the next B (x16 work) would not fit
            break
    run.write(rows, out)
    return {"rows": len(rows), "largest_batch": max((r["B"] for r in rows), default=0), "csv": str(out / "results.csv")}


def _init_single_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)


if __name__ == "__main__":
    sys.exit(main())
