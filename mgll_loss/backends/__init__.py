"""Backends compute the loss terms of a :class:`LossInputs`; this module picks one by name.

- ``"batched"``: every level in one [B, G, N] tensor of logits from one matmul, static shapes and
  a hand-written backward (one autograd node); no host reads, one graph under
  ``torch.compile(fullgraph=True)``. Memory O(B * G * N): for small and medium problems.
- ``"dense"``: every logit of a direction from one matmul, kept for the hand-written backward.
- ``"chunked"``: the same algorithm on chunks of rows, recomputed in the backward; memory
  linear in the batch. ``chunk_size`` rows per chunk (default: a 256 MiB chunk of logits).
- ``"triton"``: the chunked algorithm as Triton kernels (tiles of logits from ``tl.dot``, never
  stored). CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1`` (for tests). Raises a
  ``ValueError`` where it cannot run, never falls back.
- ``"auto"``: per device (:func:`.policy.auto_backend`). On CPUs ``"batched"`` while the logits
  have at most :data:`BATCHED_LIMIT_LOGITS` entries (rows x columns over all levels), then
  ``"dense"`` while they fit in :data:`DENSE_LIMIT_BYTES`, else ``"chunked"``. On accelerators
  the fewest launches without host reads: ``"batched"`` while its logits fit in
  :data:`BATCHED_DEVICE_LIMIT_BYTES`, else ``"chunked"`` (provisional until ``make gpu-check``
  has run on a GPU). It does not pick ``"triton"``: the kernels are validated under the Triton
  interpreter only, not yet on a GPU.

No backend reads a tensor value on the host or makes a shape that depends on values, on
accelerators (CUDA), for every kind of labels but :class:`~mgll_loss.labels.LabelSets` (whose
distinct ids are counted to lay out their columns); :mod:`.policy` says how each device is served.
"""

from __future__ import annotations

from collections.abc import Callable

from ..options import check_choice
from .base import LevelSums, LossInputs, LossTerms
from .batched import batched_level_sums, batched_weighted_terms
from .chunked import chunked_level_sums, dense_level_sums
from .policy import BATCHED_DEVICE_LIMIT_BYTES, BATCHED_LIMIT_LOGITS, DENSE_LIMIT_BYTES, auto_backend
from .triton_chunked import check_triton_installed, triton_level_sums
from .weighting import TermWeights, sum_weights, texts_present, weighted_terms

__all__ = [
    "BACKEND_NAMES",
    "BATCHED_DEVICE_LIMIT_BYTES",
    "BATCHED_LIMIT_LOGITS",
    "DENSE_LIMIT_BYTES",
    "LevelSums",
    "LossInputs",
    "LossTerms",
    "TermWeights",
    "batched_weighted_terms",
    "check_backend",
    "check_chunk_size",
    "resolve_backend",
    "resolve_backend_name",
    "sum_weights",
    "texts_present",
    "weighted_terms",
]

Backend = Callable[[LossInputs, LossTerms, int | None], LevelSums]

_BACKENDS: dict[str, Backend] = {
    "dense": dense_level_sums,
    "chunked": chunked_level_sums,
    "triton": triton_level_sums,
    "batched": batched_level_sums,
}
BACKEND_NAMES = ("auto", *_BACKENDS)


def check_backend(name: str) -> str:
    """Return ``name`` if it is a known backend that can be installed here, else raise ``ValueError``."""
    check_choice("backend", name, BACKEND_NAMES)
    if name == "triton":
        check_triton_installed()
    return name


def check_chunk_size(chunk_size: int | None) -> int | None:
    """Return ``chunk_size`` (None or a positive int), else raise."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size: expected a positive int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int or None, got {chunk_size}")
    return chunk_size


def resolve_backend(name: str, problem: LossInputs) -> Backend:
    """Return the backend function for ``name``; ``"auto"`` decides from the size of ``problem``."""
    return _BACKENDS[resolve_backend_name(name, problem)]


def resolve_backend_name(name: str, problem: LossInputs) -> str:
    """The backend that runs ``problem`` for ``name``: ``name`` itself, or what ``"auto"`` picks."""
    check_backend(name)
    if name != "auto":
        return name
    logits = (problem.row_range.stop - problem.row_range.start) * sum(problem.level_sizes)
    return auto_backend(problem.image_features.device, logits, problem.compute_dtype)
