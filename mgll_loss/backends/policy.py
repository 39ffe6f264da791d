"""The device policy: which backend ``"auto"`` runs, and how the dense and chunked backends cut a direction.

Two functions decide from the device and the problem's sizes. :func:`auto_backend` (what
``backend="auto"`` runs):

- **CPUs** (measured, docs/backends.md): ``"batched"`` up to :data:`BATCHED_LIMIT_LOGITS`
  logits (rows x columns, every level), then ``"dense"`` while its logits need at most
  :data:`DENSE_LIMIT_BYTES`, else ``"chunked"``;
- **accelerators**: the fewest launches without a host read: ``"batched"`` (one launch per
  operator of a fixed list) while its logits need at most :data:`BATCHED_DEVICE_LIMIT_BYTES`,
  else ``"chunked"`` (launches proportional to its chunks of :data:`CHUNK_BUDGET_BYTES`; one chunk,
  with the operators of the dense backend, while they fit). Never ``"triton"``, whose kernels are
  validated under the Triton interpreter only. This half is **provisional** until ``make
  gpu-check`` has run on a GPU.

:func:`device_policy` (how a direction is walked):

- **accelerators** (CUDA, or CPU tensors inside :func:`~mgll_loss.devices.accelerator_policy`,
  for tests): every operator is a kernel launch and every host read a synchronisation, so a
  chunk is processed as **one block** (the dense backend: one chunk, so its operators do not
  grow with the batch; the chunked backend: operators proportional to its number of chunks,
  whose rows come from :data:`CHUNK_BUDGET_BYTES`), positive logits of label keys come from a
  tile of P compared from the keys, and per-key feature sums have a size bound by the shapes
  (static shapes, no host read);
- **CPUs**: a chunk is processed in blocks of :data:`BLOCK_BYTES` of logits, which stay in
  cache through the passes of a block, positive logits of label keys are gathered by their
  (row, column) pairs, and per-key feature sums are sized by the keys present (both read a
  value on the host, which costs nothing on a CPU).

Example:
    >>> policy = device_policy(torch.device("cpu"), num_rows=2048, num_columns=3 * 2048, dtype=torch.float32)
    >>> policy.chunk_rows, policy.block_rows, policy.value_dependent
    (2048, 85, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..devices import on_accelerator

__all__ = [
    "BATCHED_DEVICE_LIMIT_BYTES",
    "BATCHED_LIMIT_LOGITS",
    "BLOCK_BYTES",
    "CHUNK_BUDGET_BYTES",
    "DENSE_LIMIT_BYTES",
    "DevicePolicy",
    "auto_backend",
    "chunk_rows",
    "device_policy",
]

BATCHED_LIMIT_LOGITS = 3 * 512 * 512
"""On CPUs, ``backend="auto"`` uses the batched backend up to this many logits (rows x columns, all levels).

Measured on a 2-core CPU (fp32, forward+backward, D=512, G=3, class ids; docs/backends.md): the
batched backend is faster than the dense one up to B=256 and as fast at B=512 = this limit, where
its per-op costs stop mattering and the dense backend's fewer passes over memory start to win.
"""

DENSE_LIMIT_BYTES = 2 * 2**30
"""On CPUs, ``backend="auto"`` uses the dense backend while its logits need at most this much memory (2 GiB)."""

BATCHED_DEVICE_LIMIT_BYTES = 2**30
"""On accelerators, ``backend="auto"`` uses the batched backend while its logits need at most this (1 GiB).

The batched backend holds about eight tensors the size of its logits at its peak (logits, row
and column log-softmaxes, positives, their gradient): about 8 GiB here, e.g. G=3 levels of
B=N=9459 in float32. Provisional until ``make gpu-check`` has run on a GPU.
"""

CHUNK_BUDGET_BYTES = 256 * 2**20
"""Default memory for one chunk of logits in the chunked backend (256 MiB)."""

BLOCK_BYTES = 2 * 2**20
"""On CPUs, the logits of a block of rows (2 MiB): they stay in cache through the passes of the block."""


def chunk_rows(num_columns: int, dtype: torch.dtype, budget_bytes: int = CHUNK_BUDGET_BYTES) -> int:
    """Rows per chunk so that a chunk of logits ([rows, num_columns] of ``dtype``) fits ``budget_bytes``."""
    itemsize = dtype.itemsize
    return max(1, budget_bytes // max(1, num_columns * itemsize))


def auto_backend(device: torch.device, num_logits: int, dtype: torch.dtype) -> str:
    """The backend ``backend="auto"`` runs for ``num_logits`` logits (rows x columns, every level) on ``device``.

    See the module docstring; ``dtype`` is the compute dtype.

    Example:
        >>> auto_backend(torch.device("cpu"), 3 * 2048 * 2048, torch.float32)
        'dense'
        >>> auto_backend(torch.device("cuda"), 3 * 2048 * 2048, torch.float32)
        'batched'
    """
    itemsize = dtype.itemsize
    if on_accelerator(device):
        return "batched" if num_logits * itemsize <= BATCHED_DEVICE_LIMIT_BYTES else "chunked"
    if num_logits <= BATCHED_LIMIT_LOGITS:
        return "batched"
    return "dense" if num_logits * itemsize <= DENSE_LIMIT_BYTES else "chunked"


@dataclass(frozen=True)
class DevicePolicy:
    """How a direction of ``num_rows`` rows is walked.

    Attributes:
        chunk_rows: rows per chunk (all of them for the dense backend).
        block_rows: rows per block within a chunk (a whole chunk on accelerators).
        value_dependent: tactics whose sizes depend on values, read on the host (CPU only):
            positive logits of label keys gathered by their pairs (else from a tile of P compared
            from the keys), and per-key feature sums sized by the keys present (else by their bound).
    """

    chunk_rows: int
    block_rows: int
    value_dependent: bool


def device_policy(
    device: torch.device,
    *,
    num_rows: int,
    num_columns: int,
    dtype: torch.dtype,
    chunked: bool = False,
    chunk_size: int | None = None,
) -> DevicePolicy:
    """The :class:`DevicePolicy` of a direction on ``device`` (see the module docstring).

    Args:
        device: where the direction's tensors are.
        num_rows, num_columns: the direction's logits, [num_rows, num_columns] (every level).
        dtype: the compute dtype.
        chunked: the chunked backend (chunks of ``chunk_size`` rows, default :func:`chunk_rows`);
            else the dense one (one chunk).
        chunk_size: the chunked backend's rows per chunk, None for the default.
    """
    rows = max(1, num_rows)
    chunk = min(rows, (chunk_size or chunk_rows(num_columns, dtype)) if chunked else rows)
    if on_accelerator(device):
        return DevicePolicy(chunk, chunk, value_dependent=False)
    return DevicePolicy(chunk, min(chunk, chunk_rows(num_columns, dtype, BLOCK_BYTES)), value_dependent=True)
