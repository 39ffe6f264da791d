"""Record the ATen operators a computation issues, and those that would synchronise a GPU.

:class:`OperatorLog` is a ``TorchDispatchMode``: it sees every operator that reaches the dispatcher
(forward and backward; composite operators already decomposed), which on a GPU is a kernel launch
each. An operator is a **host read** when its result depends on tensor values in a way the host
must wait for:

- operators tagged ``data_dependent_output`` by PyTorch (``aten::_local_scalar_dense`` behind
  ``.item()``, ``bool()``, ``int()``, ``float()``; ``aten::equal``, ``aten::allclose``) and
  ``aten::is_nonzero`` (``if tensor:``), which return a Python value;
- operators tagged ``dynamic_output_shape`` (``nonzero``, ``unique*``, ``bincount``,
  ``masked_select``, ``repeat_interleave`` of counts, indexing), whose output size the host must
  read before it can allocate the output — except the two that are static in the form used:
  ``aten::index.Tensor`` with integer indices only, and ``aten::repeat_interleave.Tensor`` given
  an ``output_size``;
- ``aten::index_put`` (``x[mask] = v``) with a boolean index, which runs a ``nonzero`` inside.

``torch._assert_async`` is not a host read: the check runs on the device.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OperatorLog", "host_read_reason"]

_ATEN = torch.ops.aten


def _has_bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def host_read_reason(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why ``func(*args, **kwargs)`` reads a value on the host, or None when it does not (see the module)."""
    packet = func.overloadpacket
    if packet is _ATEN.index:
        return "boolean index (value-dependent shape)" if _has_bool_index(args[1]) else None
    if packet in (_ATEN.index_put, _ATEN.index_put_, _ATEN._index_put_impl_):
        return "boolean index (nonzero inside)" if _has_bool_index(args[1]) else None
    if func is _ATEN.repeat_interleave.Tensor:
        return None if kwargs.get("output_size") is not None else "repeat_interleave without output_size"
    if packet is _ATEN.is_nonzero:
        return "is_nonzero (Python bool of a tensor)"
    if torch.Tag.data_dependent_output in func.tags:
        return "reads a value on the host"
    if torch.Tag.dynamic_output_shape in func.tags:
        return "value-dependent output shape"
    return None


class OperatorLog(TorchDispatchMode):
    """Count the operators issued inside the context and collect the host reads among them.

    Attributes:
        counts: operator name -> number of calls, views left out (a view changes metadata only and
            launches no kernel; indexing skips a slice over a whole dimension altogether).
        views: view operator name -> number of calls.
        host_reads: (operator name, reason) of every host read, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.views: Counter[str] = Counter()
        self.host_reads: list[tuple[str, str]] = []

    @property
    def total(self) -> int:
        """Operators issued, views left out: kernel launches on a GPU."""
        return sum(self.counts.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        (self.views if func.is_view else self.counts)[name] += 1
        reason = host_read_reason(func, args, kwargs)
        if reason is not None:
            self.host_reads.append((name, reason))
        return func(*args, **kwargs)
