"""Argument descriptions shared by the functions and the modules, written once.

A docstring names a fragment on a line of its own, ``%(backend_options)s``, indented like the
``Args`` entries around it; :func:`shared_args` replaces the line with the fragment at that indent.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["FRAGMENTS", "shared_args"]

FRAGMENTS = {
    "match": 'match: how multi-hot labels and label sets are compared, "exact" | "overlap" | "jaccard".',
    "backend_options": """\
backend: "auto" | "batched" | "dense" | "chunked" | "triton" (see :mod:`mgll_loss.backends`).
chunk_size: rows per chunk of the chunked backend (the others ignore it); None: as many as
    256 MiB of logits hold.
local_loss: with torch.distributed, compute this rank's rows and columns against the
    gathered global batch instead of the whole global loss (needs ``gather_with_grad``).
gather_with_grad: gather features through the autograd-aware all-gather.
rank, world_size: this process's rank and the number of ranks; None reads them from the
    initialised process group. All four are no-ops in a single process.""",
}
"""The shared descriptions by name."""

_Documented = TypeVar("_Documented")


def shared_args(obj: _Documented) -> _Documented:
    """Replace each ``%(name)s`` line of ``obj``'s docstring with ``FRAGMENTS[name]``; raise ``KeyError`` if unknown.

    A docstring stripped away (``python -OO``) is left as it is.
    """
    doc = getattr(obj, "__doc__", None)
    if not doc:
        return obj
    lines = []
    for line in doc.splitlines():
        marker = line.strip()
        if marker.startswith("%(") and marker.endswith(")s"):
            indent = line[: len(line) - len(line.lstrip())]
            lines += [indent + text if text else text for text in FRAGMENTS[marker[2:-2]].splitlines()]
        else:
            lines.append(line)
    obj.__doc__ = "\n".join(lines)
    return obj
