"""Feature-cached gradient accumulation: the loss of a large effective batch, encoded in micro-batches.

Plain gradient accumulation sums the losses of micro-batches, so each micro-batch only meets its own
negatives and positives: a different objective for a contrastive loss. :func:`accumulate_step`
instead computes the loss of the whole effective batch from cached features and backpropagates it
through the encoders one micro-batch at a time, the method of GradCache (Gao et al., 2021) and of
open_clip's ``--accum-freq``, here for any loss with the open_clip call convention (multi-level,
multi-positive :class:`~mgll_loss.MGLLLoss` included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .options import check_flag

__all__ = ["accumulate_step"]

#: Model outputs with one row per example (concatenated over micro-batches along dim -2).
ROW_KEYS = ("image_features", "text_features")

LossOutput = Tensor | dict[str, Tensor]


@dataclass
class _RngState:
    """The CPU and (if initialised) CUDA generator states, to replay a micro-batch's randomness."""

    cpu: Tensor
    cuda: list[Tensor] | None

    @classmethod
    def capture(cls) -> _RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def accumulate_step(
    model: Callable[..., Mapping[str, Any]],
    loss_fn: Callable[..., LossOutput],
    micro_batches: Sequence[Mapping[str, Any]],
    *,
    labels: Any = None,
    targets: Any = None,
    text_mask: Any = None,
    output_dict: bool = False,
) -> LossOutput:
    """Backpropagate the loss of a large effective batch while encoding one micro-batch at a time.

    Adds to every parameter's ``.grad`` what ``loss_fn(**model(**big_batch), labels=labels,
    ...).backward()`` would add for the concatenation of the micro-batches, with the encoder
    activations of only one micro-batch alive at a time (GradCache, Gao et al. 2021; open_clip's
    ``--accum-freq``):

    1. without gradients, encode every micro-batch and cache its features;
    2. compute the loss of the whole effective batch on the cached features and its gradient
       :math:`\\partial L / \\partial f` with respect to them, once;
    3. re-encode each micro-batch with gradients and backpropagate its slice of
       :math:`\\partial L / \\partial f` (a vector-Jacobian product), which by the chain rule adds
       up to :math:`\\partial L / \\partial \\theta` over the micro-batches.

    Before each micro-batch's first pass the CPU and CUDA random states are saved and restored for
    its second pass, so dropout and stochastic depth draw the same numbers in both passes: the
    result equals the big batch that draws the random numbers the micro-batches drew when encoded
    in order; afterwards the generators are left where the first pass left them. ``logit_scale``
    and ``logit_bias`` (and any other output besides the features) must not depend on the
    micro-batch: the loss uses the first micro-batch's values, and their gradient is
    backpropagated once, through the first micro-batch's graph (the other micro-batches
    backpropagate zero), so the parameter receives exactly its big-batch gradient.

    Layers that mix the rows of a batch (BatchNorm in training mode) see one micro-batch at a
    time, as in any gradient accumulation, so such a model does not equal its big batch; the
    module's buffers (running statistics) are restored after the second pass, so they move once
    per micro-batch.

    Under DDP pass the ``DistributedDataParallel`` module: the first pass runs its inner module,
    the second pass runs all micro-batches but the last under ``no_sync()``, so gradients are
    all-reduced once per effective step. A distributed loss (``gather_with_grad``,
    ``local_loss``) gathers the ranks' cached features as it does for one batch; ranks may hold
    different numbers of micro-batches. For mixed precision run the call under ``torch.autocast``:
    the encoders run under it, the loss and every backward pass with autocast disabled (the
    losses of this library read bf16/fp16 features and accumulate in fp32; torch advises backward
    passes outside autocast). For fp16 with a ``GradScaler``, scale inside ``loss_fn`` (see the
    guide).

    Args:
        model: called as ``model(**micro_batch)``; returns a mapping with the loss's keyword
            inputs: ``image_features``, ``text_features`` (a tensor [..., b, D] or a sequence of
            G tensors [b_g, D]), ``logit_scale`` and optionally ``logit_bias``, as
            :class:`~mgll_loss.adapters.open_clip.MultiGranularOpenCLIP` and
            :class:`~mgll_loss.adapters.hf.MultiGranularHFCLIP` do.
        loss_fn: e.g. :class:`~mgll_loss.MGLLLoss`; called once, on the whole effective batch.
            ``labels``, ``targets``, ``text_mask`` and ``output_dict`` are passed only when
            given (not None / True), so open_clip's ``ClipLoss`` works too.
        micro_batches: the keyword arguments of ``model`` for each micro-batch, in order;
            sizes may differ.
        labels, targets, text_mask: for the whole effective batch (rows in micro-batch order),
            exactly as for one big batch.
        output_dict: return (and expect from ``loss_fn``) the dict of terms; their sum is
            backpropagated.

    Shape:
        micro-batch k gives ``image_features`` [b_k, D] and ``text_features`` [G, b_k, D]; the
        loss sees [B, D] and [G, B, D] with B = sum of b_k; ``labels`` per level [B] or [B, C],
        ``targets`` [B, N], ``text_mask`` [G, N]. Returns the loss (0-dim, detached) or the
        dict of detached terms.

    Raises:
        TypeError: ``model`` or ``loss_fn`` is not callable, ``micro_batches`` is not a sequence
            of mappings, the model's output is not a mapping of the expected tensors, or
            ``output_dict`` and the loss's output disagree.
        ValueError: no micro-batches; micro-batches whose features differ in shape other than
            the rows (e.g. in G or D); ``labels``/``targets``/``text_mask`` whose rows do not
            match the effective batch; a ``logit_scale``/``logit_bias`` that differs between
            micro-batches; model outputs that carry no gradient (encoded under ``torch.no_grad()``
            or detached), which would leave every ``.grad`` untouched.

    Example:
        >>> import torch.nn.functional as F
        >>> from mgll_loss import MGLLLoss
        >>> class TwoTower(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.image, self.text = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
        ...         self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        ...     def forward(self, images, texts):  # images [b, 5], texts [G, b, 5]
        ...         return dict(image_features=F.normalize(self.image(images), dim=-1),
        ...                     text_features=F.normalize(self.text(texts), dim=-1),
        ...                     logit_scale=self.logit_scale.exp())
        >>> model, loss_fn = TwoTower(), MGLLLoss()
        >>> images, texts, labels = torch.randn(6, 5), torch.randn(2, 6, 5), [torch.tensor([0, 0, 1, 1, 2, 2]), None]
        >>> micro_batches = [dict(images=images[:4], texts=texts[:, :4]), dict(images=images[4:], texts=texts[:, 4:])]
        >>> loss = accumulate_step(model, loss_fn, micro_batches, labels=labels)
        >>> accumulated = model.logit_scale.grad.clone()
        >>> model.zero_grad()
        >>> loss_fn(**model(images, texts), labels=labels).backward()  # the same gradient, all 6 rows at once
        >>> torch.allclose(model.logit_scale.grad, accumulated, atol=1e-6)
        True

    References:
        L. Gao, Y. Zhang, J. Han, J. Callan, "Scaling Deep Contrastive Learning Batch Size under
        Memory Limited Setup" (GradCache), RepL4NLP 2021, arXiv:2101.06983; open_clip's
        ``--accum-freq`` training option.
    """
    for name, value in (("model", model), ("loss_fn", loss_fn)):
        if not callable(value):
            raise TypeError(f"{name}: expected a callable (a module or a function), got {type(value).__name__}")
    check_flag("output_dict", output_dict)
    batches = _check_micro_batches(micro_batches)
    encoder = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    states, cached = [], []
    with torch.no_grad():
        for k, batch in enumerate(batches):
            states.append(_RngState.capture())
            cached.append(_check_outputs(k, encoder(**batch)))
    after_first_pass = _RngState.capture()
    buffers = _buffers(encoder)

    inputs, leaves, row_sizes = _effective_inputs(cached)
    text = inputs["text_features"]
    _check_effective_rows(labels, targets, text_mask, row_sizes, tuple(text.shape) if isinstance(text, Tensor) else ())
    extra: dict[str, Any] = {
        k: v for k, v in dict(labels=labels, targets=targets, text_mask=text_mask).items() if v is not None
    }
    if output_dict:
        extra["output_dict"] = True
    # the loss reads low-precision features itself; backward passes run outside autocast
    with torch.enable_grad(), _autocast_off():
        result = loss_fn(**inputs, **extra)
        total = _total(result, output_dict)
        keys = [key for key, leaf in leaves.items() if leaf.requires_grad]
        values = torch.autograd.grad(total, [leaves[key] for key in keys], allow_unused=True) if keys else ()
        grads: dict[tuple[str, int], Tensor | None] = dict(zip(keys, values, strict=True))
    del cached, inputs, leaves

    no_sync = getattr(model, "no_sync", None)
    backpropagated = not grads  # nothing to backpropagate when the loss depends on no model output
    try:
        for k, batch in enumerate(batches):
            states[k].restore()
            last = k == len(batches) - 1
            with contextlib.nullcontext() if last or not callable(no_sync) else no_sync():
                outputs = _check_outputs(k, model(**batch))
                tensors, vectors = _micro_batch_gradients(k, outputs, grads, row_sizes)
                if tensors:
                    backpropagated = True
                    with _autocast_off():
                        torch.autograd.backward(tensors, vectors)
    finally:
        after_first_pass.restore()
        _restore_buffers(encoder, buffers)
    if not backpropagated:
        raise ValueError(
            "model: its outputs carry no gradient (encoded under torch.no_grad(), detached, or every parameter "
            "frozen), so no parameter would receive a gradient; a plain loss.backward() would fail the same way"
        )
    if output_dict:
        return {name: value.detach() for name, value in result.items()}  # type: ignore[union-attr]
    return total.detach()


def _autocast_off() -> contextlib.ExitStack:
    """A context with autocast disabled on every device type where the caller enabled it."""
    stack = contextlib.ExitStack()
    for device_type in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
    return stack


def _buffers(model: Any) -> dict[str, Tensor]:
    """Copies of the module's buffers (e.g. BatchNorm running statistics) after the first pass."""
    return {name: b.detach().clone() for name, b in model.named_buffers()} if isinstance(model, nn.Module) else {}


def _restore_buffers(model: Any, saved: dict[str, Tensor]) -> None:
    """Undo the second pass's buffer updates, so running statistics move once per micro-batch."""
    if isinstance(model, nn.Module):
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved and saved[name].shape == buffer.shape:
                    buffer.copy_(saved[name])


def _check_micro_batches(micro_batches: Any) -> list[Mapping[str, Any]]:
    if isinstance(micro_batches, (str, bytes, Mapping)) or not isinstance(micro_batches, Sequence):
        raise TypeError(
            "micro_batches: expected a sequence of keyword dicts for model(**batch), "
            f"got {type(micro_batches).__name__}"
        )
    if len(micro_batches) == 0:
        raise ValueError("micro_batches: expected at least one micro-batch, got an empty sequence")
    for k, batch in enumerate(micro_batches):
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"micro_batches[{k}]: expected a dict of keyword arguments for model, got {type(batch).__name__}"
            )
    return list(micro_batches)


def _parts(k: int, key: str, value: Any) -> list[Tensor]:
    """A row output as a list of tensors [..., b, D] (one tensor, or one per level)."""
    parts = [value] if isinstance(value, Tensor) else list(value) if isinstance(value, (list, tuple)) else None
    if not parts or not all(isinstance(p, Tensor) and p.dim() >= 2 for p in parts):
        raise TypeError(
            f"model(**micro_batches[{k}])[{key!r}]: expected a tensor [..., b, D] or a sequence of "
            f"tensors [b, D], got {type(value).__name__}"
        )
    return parts


def _check_outputs(k: int, outputs: Any) -> dict[str, Any]:
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"model(**micro_batches[{k}]): expected a mapping of the loss's keyword inputs "
            f"(image_features, text_features, logit_scale, ...), got {type(outputs).__name__}"
        )
    missing = [key for key in (*ROW_KEYS, "logit_scale") if key not in outputs]
    if missing:
        raise TypeError(
            f"model(**micro_batches[{k}]): expected keys {list(ROW_KEYS) + ['logit_scale']}, missing {missing}"
        )
    for key in ROW_KEYS:
        _parts(k, key, outputs[key])
    return dict(outputs)


def _layout(parts: list[Tensor]) -> list[tuple[int, ...]]:
    """Each part's shape without its row dimension (-2)."""
    return [tuple(p.shape[:-2]) + tuple(p.shape[-1:]) for p in parts]


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a.detach(), b.detach().to(a.device)))
    return type(a) is type(b) and bool(a == b)


def _effective_inputs(
    cached: list[dict[str, Any]],
) -> tuple[dict[str, Any], dict[tuple[str, int], Tensor], dict[str, list[list[int]]]]:
    """The loss's inputs for the effective batch: cached features concatenated as leaves, the rest from micro-batch 0.

    Returns the inputs, the leaves that get a gradient (keyed by (output, part)), and per row
    output the rows of each part in each micro-batch.
    """
    first = cached[0]
    inputs: dict[str, Any] = {}
    leaves: dict[tuple[str, int], Tensor] = {}
    row_sizes: dict[str, list[list[int]]] = {}
    for key, value in first.items():
        if key not in ROW_KEYS:
            for k, outputs in enumerate(cached[1:], start=1):
                if key not in outputs or not _same_value(value, outputs[key]):
                    raise ValueError(
                        f"{key}: expected the same value from every micro-batch (a function of the parameters "
                        f"only), got {value!r} from micro-batch 0 and {outputs.get(key)!r} from micro-batch {k}"
                    )
            if isinstance(value, Tensor):
                leaves[(key, 0)] = value.detach().requires_grad_(value.is_floating_point())
                inputs[key] = leaves[(key, 0)]
            else:
                inputs[key] = value
            continue
        per_batch = [_parts(k, key, outputs[key]) for k, outputs in enumerate(cached)]
        expected = _layout(per_batch[0])
        for k, parts in enumerate(per_batch[1:], start=1):
            if _layout(parts) != expected:
                raise ValueError(
                    f"{key}: expected every micro-batch to give the same shape except the rows (dim -2), "
                    f"got {[tuple(p.shape) for p in per_batch[0]]} from micro-batch 0 and "
                    f"{[tuple(p.shape) for p in parts]} from micro-batch {k} (a different number of levels G?)"
                )
        row_sizes[key] = [[p.shape[-2] for p in parts] for parts in per_batch]
        joined = []
        for index in range(len(expected)):
            leaf = torch.cat([parts[index] for parts in per_batch], dim=-2).requires_grad_(True)
            leaves[(key, index)] = leaf
            joined.append(leaf)
        inputs[key] = joined[0] if isinstance(value, Tensor) else type(value)(joined)
    return inputs, leaves, row_sizes


def _check_effective_rows(
    labels: Any, targets: Any, text_mask: Any, row_sizes: dict[str, list[list[int]]], text_shape: tuple[int, ...]
) -> None:
    """Labels/targets have one row per image of the effective batch; a text mask one entry per text.

    A tensor of labels/targets is checked for a single-level loss (``text_features`` [N, D]) only;
    per-level losses expect a sequence, and the loss itself names any other type.
    """
    images = sum(sizes[0] for sizes in row_sizes["image_features"])
    texts = [sum(sizes[g] for sizes in row_sizes["text_features"]) for g in range(len(row_sizes["text_features"][0]))]
    split = " + ".join(str(sizes[0]) for sizes in row_sizes["image_features"])
    single_level = len(texts) == 1 and len(text_shape) == 2
    for name, value in (("labels", labels), ("targets", targets)):
        for entry_name, entry in _entries(name, value, single_level):
            if entry.dim() == 0 or entry.shape[0] != images:
                raise ValueError(
                    f"{entry_name}: expected {images} rows, the effective batch ({split} images of the "
                    f"micro-batches), got shape {tuple(entry.shape)}"
                )
    for g, (entry_name, entry) in enumerate(_entries("text_mask", text_mask, True)):
        columns = texts[g] if len(texts) > 1 else texts[0]
        if entry.dim() == 0 or entry.shape[-1] != columns:
            raise ValueError(
                f"{entry_name}: expected {columns} entries in the last dimension, the texts of the effective "
                f"batch, got shape {tuple(entry.shape)}"
            )


def _entries(name: str, value: Any, tensor_allowed: bool) -> list[tuple[str, Tensor]]:
    """The tensors of a per-level argument with their names: one tensor, or a sequence with None entries."""
    if value is None:
        return []
    if isinstance(value, Tensor):
        return [(name, value)] if tensor_allowed else []
    if isinstance(value, (list, tuple)):
        return [(f"{name}[{g}]", v) for g, v in enumerate(value) if isinstance(v, Tensor)]
    return []  # anything else: the loss names it


def _total(result: Any, output_dict: bool) -> Tensor:
    if output_dict:
        if not isinstance(result, Mapping) or not result:
            raise TypeError(
                f"loss_fn: with output_dict=True expected a dict of loss terms, got {type(result).__name__}"
            )
        return sum(result.values())  # type: ignore[return-value]
    if not isinstance(result, Tensor) or result.dim() != 0:
        raise TypeError(
            "loss_fn: expected a 0-dim loss tensor (pass output_dict=True for a dict of terms), "
            f"got {type(result).__name__}"
        )
    return result


def _micro_batch_gradients(
    k: int,
    outputs: dict[str, Any],
    grads: dict[tuple[str, int], Tensor | None],
    row_sizes: dict[str, list[list[int]]],
) -> tuple[list[Tensor], list[Tensor]]:
    """Micro-batch k's outputs that need a backward and their gradients (rows k of the cached-feature gradients)."""
    tensors: list[Tensor] = []
    vectors: list[Tensor] = []
    for key, value in outputs.items():
        if key in ROW_KEYS:
            parts = _parts(k, key, value)
            for index, part in enumerate(parts):
                sizes = [batch[index] for batch in row_sizes[key]]
                if part.shape[-2] != sizes[k]:
                    raise RuntimeError(
                        f"{key}: micro-batch {k} gave {part.shape[-2]} rows in its second pass, {sizes[k]} in its first"
                    )
                grad = grads.get((key, index))
                if part.requires_grad and grad is not None:
                    start = sum(sizes[:k])
                    tensors.append(part)
                    vectors.append(grad.narrow(-2, start, sizes[k]))
        elif isinstance(value, Tensor) and value.requires_grad:
            grad = grads.get((key, 0))
            if grad is not None:  # the whole gradient once; zeros keep every parameter in the other graphs (DDP)
                tensors.append(value)
                vectors.append(grad if k == 0 else torch.zeros_like(grad))
    return tensors, vectors
