"""Shared test utilities: seeded input builders, the per-dtype tolerance table and the checks that apply it.

Every builder is deterministic: it takes a ``seed`` (or a ``torch.Generator``, to draw several
tensors from one stream), draws on the CPU and only then moves the result to ``device``, so a test
sees the same values on every device. The tolerance table is the one ``docs/backends.md``
("Correctness: the tolerance table") documents; ``benchmarks/gpu_check.py`` uses it too.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


# -------------------------------------------------------------------------------------------------
# input builders
# -------------------------------------------------------------------------------------------------
def unit_features(
    *shape: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    requires_grad: bool = False,
) -> Tensor:
    """L2-normalised random features of ``shape`` (last dim is D), as a leaf tensor.

    Drawn in float64 on the CPU from ``generator`` (or a fresh one seeded with ``seed``), then cast to
    ``dtype`` and moved to ``device``.
    """
    generator = torch.Generator().manual_seed(seed) if generator is None else generator
    x = F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)
    return x.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def class_ids(batch: int, num_classes: int, seed: int = 0) -> Tensor:
    """Random class ids [B] drawn from ``num_classes`` classes (duplicates when B > num_classes)."""
    return torch.randint(0, num_classes, (batch,), generator=torch.Generator().manual_seed(seed))


def multi_hot(batch: int, num_labels: int, seed: int = 0, p: float = 0.4) -> Tensor:
    """Random 0/1 labels [B, C] with an all-zero row and a duplicated row."""
    labels = (torch.rand(batch, num_labels, generator=torch.Generator().manual_seed(seed)) < p).long()
    if batch > 2:
        labels[0] = 0
        labels[2] = labels[1]
    return labels


def multi_hot_from_rows(rows: list[list[int]], num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Multi-hot [len(rows), num_classes] with row i switched on at the class indices ``rows[i]``."""
    labels = torch.zeros(len(rows), num_classes, dtype=dtype)
    for i, row in enumerate(rows):
        for c in row:
            labels[i, c] = 1
    return labels


def level_labels(batch: int, seed: int = 0) -> list[Tensor | None]:
    """Labels for three levels: coarse ids, multi-hot, none."""
    return [class_ids(batch, 2, seed), multi_hot(batch, 4, seed + 1), None]


def to_device(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor in it (also inside lists, tuples and dict values) moved to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def skip_without_triton() -> None:
    """Skip the calling test unless the triton backend can run here (triton >= 3.5 importable)."""
    import pytest  # only the tests skip; benchmarks/gpu_check.py imports this module without pytest

    from mgll_loss.backends.triton_chunked import check_triton_installed

    try:
        check_triton_installed()
    except ValueError as error:
        pytest.skip(str(error))


def literal_regex(*parts: str) -> str:
    """A regex that matches the literal ``parts`` in this order (anything in between), for ``pytest.raises``."""
    return ".*".join(re.escape(p) for p in parts)


# -------------------------------------------------------------------------------------------------
# the tolerance table (docs/backends.md, "Correctness: the tolerance table")
#
# The library against the plain float64 reference of tests/reference.py, per input dtype. For
# float16/bfloat16 the library runs on the low-precision inputs and the reference runs on *the same
# values* upcast to float64, so input rounding is not an error source.
# -------------------------------------------------------------------------------------------------
TOL = {
    # float64 in, float64 compute: only summation order differs.
    torch.float64: dict(loss_rtol=1e-10, loss_atol=1e-10, grad_rtol=1e-10, grad_atol=1e-10),
    # float32 compute: loss rtol 1e-5, grads atol 1e-5 (docs/backends.md, "Correctness").  Grads also get rtol 1e-5,
    # and the atol is scaled by max(1, max|g_ref|) (see check_grads): at logit scale 100 gradient
    # entries are O(10), and even open_clip's ClipLoss in fp32 is off by 1.3e-5 on such a gradient.
    torch.float32: dict(loss_rtol=1e-5, loss_atol=1e-6, grad_rtol=1e-5, grad_atol=1e-5),
    # bfloat16 in: the reference sees the same (exactly upcast) values and docs/math.md requires fp32 compute
    # with an fp32 loss (checked by check_dtype), so the loss is as accurate as in fp32 -> rtol 1e-5
    # (measured ~2e-8).  Gradients w.r.t. bf16 leaves are rounded once to bf16 (<= 2^-9 = 2e-3
    # relative per entry; measured max |err| / max |g| ~2e-3) -> rtol 1e-2, atol 1e-3 (scaled by the
    # gradient's size, see check_grads) for entries near zero.  The fp32 scale/bias grads are
    # accurate to ~1e-7 and easily meet these.
    torch.bfloat16: dict(loss_rtol=1e-5, loss_atol=1e-6, grad_rtol=1e-2, grad_atol=1e-3),
    # float16 in: same reasoning; one rounding to fp16 is <= 2^-12 = 2.4e-4 relative (measured
    # max |err| / max |g| ~4e-4 incl. fp16 subnormals below 6.1e-5) -> rtol 2e-3, atol 1e-4 scaled.
    torch.float16: dict(loss_rtol=1e-5, loss_atol=1e-6, grad_rtol=2e-3, grad_atol=1e-4),
}
LOW_PRECISION = (torch.bfloat16, torch.float16)


def same_dtype_tol(dtype: torch.dtype) -> dict[str, float]:
    """rtol/atol for two implementations that compute in the same dtype (only reduction order differs).

    Values and gradients alike, unscaled: the table's gradient tolerances, i.e. rtol = atol = 1e-10 in
    float64 and 1e-5 in float32 (open_clip's and Hugging Face's losses, two backends on one problem).
    """
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"same-dtype comparisons are defined for float64 and float32, not {dtype}")
    return dict(rtol=TOL[dtype]["grad_rtol"], atol=TOL[dtype]["grad_atol"])


#: float64 results of one batch computed in pieces (ranks, micro-batches) against one process holding
#: the whole batch (docs/distributed.md).
SPLIT_BATCH_TOL = dict(rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------------------------
# checks against the reference (compared on the CPU in float64, whatever the library's device)
# -------------------------------------------------------------------------------------------------
def check_value(got: Tensor, want: Tensor, dtype: torch.dtype, what: str = "loss") -> None:
    """A loss value is finite and agrees with the reference's within the table's loss tolerances."""
    tol = TOL[dtype]
    assert torch.isfinite(got).all(), f"{what}: not finite: {got}"
    torch.testing.assert_close(
        got.detach().cpu().double(),
        want.detach().cpu().double(),
        rtol=tol["loss_rtol"],
        atol=tol["loss_atol"],
        msg=lambda m: f"{what}: {m}",
    )


def check_grads(lib: dict[str, Any], ref: dict[str, Any], dtype: torch.dtype) -> None:
    """Gradients agree entry-wise within rtol, and within ``grad_atol * max(1, max|g_ref|)``.

    ``lib`` and ``ref`` are leaf dicts as built by ``tests.parity_cases.leaves``. The absolute part is
    scaled by the size of the gradient tensor: gradients w.r.t. the features are proportional to the
    logit scale (up to O(10) at s=100), and an entry that is a cancellation of such O(10) terms
    carries an absolute rounding error proportional to them, in any implementation.  (Measured:
    open_clip's own ClipLoss in fp32 vs float64 at s=100, B=8 is off by 1.3e-5 on single near-zero
    entries of a gradient whose largest entry is 10.8.)
    """
    tol = TOL[dtype]
    g_lib, g_ref = leaf_grads(lib), leaf_grads(ref)
    for key, want in g_ref.items():
        got = g_lib[key]
        if got is None and want is None:
            continue
        assert got is not None, f"no gradient reached {key} (reference gradient: {want})"
        got = got.cpu().double()
        if want is None:  # the reference does not depend on this leaf
            want = torch.zeros_like(got)
        size = max(1.0, float(want.detach().abs().max())) if want.numel() else 1.0
        torch.testing.assert_close(
            got,
            want.cpu().double(),
            rtol=tol["grad_rtol"],
            atol=tol["grad_atol"] * size,
            msg=lambda m, k=key: f"grad {k}: {m}",
        )


def leaf_grads(leaves: dict[str, Any]) -> dict[str, Tensor | None]:
    """The ``.grad`` of every leaf: image, scale, text (or text0, text1, ... for a list) and bias."""
    out = {"image": leaves["image"].grad, "scale": leaves["scale"].grad}
    if isinstance(leaves["text"], (list, tuple)):
        for g, t in enumerate(leaves["text"]):
            out[f"text{g}"] = t.grad
    else:
        out["text"] = leaves["text"].grad
    if leaves["bias"] is not None:
        out["bias"] = leaves["bias"].grad
    return out


def check_dtype(out: Tensor, dtype: torch.dtype) -> None:
    """docs/math.md, "Numerics": float64 in -> float64; fp32/fp16/bf16 in -> computed in fp32, fp32 out."""
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == expected, f"loss dtype {out.dtype}, expected {expected} for {dtype} inputs"
