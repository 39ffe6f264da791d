"""Input checks shared by every loss.

Each check raises a ``TypeError`` or ``ValueError`` that names the argument, the expected
shape and the shape received, before any heavy work is done.

Checks of tensor *values* (a finite positive logit scale, 0/1 multi-hot labels, targets in
[0, 1]) go through :func:`require`, which never reads a value on the host where that would cost:
in eager mode on CPU tensors it raises the ``ValueError`` at once; while ``torch.compile`` traces,
and on accelerator tensors, it becomes an asynchronous assert (``torch._assert_async``): no host
synchronisation, no graph break, and a failing check still stops the step with the same message
(a ``RuntimeError`` on CPU, a device-side assertion on CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any, cast

import torch
from torch import Tensor

from .devices import on_accelerator


def shape_of(value: Any) -> str:
    """Format a tensor's shape as ``[a, b]`` for error messages.

    While ``torch.compile`` traces, sizes may be symbolic (after a recompile with dynamic shapes)
    and cannot be formatted into the constant message of an asynchronous assert: each is then ``?``.
    """
    if torch.compiler.is_compiling():
        return "[" + ", ".join("?" for _ in value.shape) + "]"
    return "[" + ", ".join(str(s) for s in value.shape) + "]"


def require(condition: Tensor, message: str, eager_message: Callable[[], str] | None = None) -> None:
    """Raise ``ValueError`` unless every element of ``condition`` (a bool tensor) is True, without a host sync.

    Eager on CPU the error is raised at once, with ``eager_message()`` (which may read values) or
    ``message``. While ``torch.compile`` traces, or on accelerator tensors, the check is
    ``torch._assert_async(condition.all(), message)``: it never synchronises with the host nor breaks
    the graph, and a failure stops the step with ``message`` (see the module docstring).
    """
    everywhere = condition if condition.dim() == 0 else condition.all()
    if not _reads_on_host(condition):
        torch._assert_async(everywhere, message)
    elif not bool(everywhere):
        raise ValueError(eager_message() if eager_message is not None else message)


def _reads_on_host(tensor: Tensor) -> bool:
    """True when reading ``tensor``'s values costs no synchronisation and no graph break: eager, on CPU.

    Inside :func:`~mgll_loss.devices.accelerator_policy` (tests) CPU tensors are checked as on CUDA.
    """
    return not on_accelerator(tensor.device) and not torch.compiler.is_compiling()


def check_image_features(image_features: Any) -> Tensor:
    """Check ``image_features`` is a non-empty floating tensor of shape [B, D]."""
    if not isinstance(image_features, Tensor):
        raise TypeError(f"image_features: expected a torch.Tensor of shape [B, D], got {type(image_features).__name__}")
    if not image_features.is_floating_point():
        raise TypeError(f"image_features: expected a floating-point tensor, got dtype {image_features.dtype}")
    if image_features.dim() != 2:
        raise ValueError(f"image_features: expected shape [B, D], got {shape_of(image_features)}")
    if image_features.shape[0] == 0 or image_features.shape[1] == 0:
        raise ValueError(
            f"image_features: expected a non-empty batch [B, D] with B >= 1 and D >= 1, got {shape_of(image_features)}"
        )
    return image_features


def check_finite_features(image_features: Tensor, text_features: Any, stacked_text: Tensor) -> None:
    """Raise unless every feature is finite (a NaN or inf feature makes the whole loss NaN).

    One reduction per tensor (``torch.aminmax``) and one check (:func:`require`): the minimum and
    the maximum of a tensor are both finite exactly when all its values are, since ``aminmax``
    propagates NaN and an infinity is an extreme. Nothing is summed, so nothing can overflow: the
    check is exact for every dtype and size (float16 features whose sum exceeds 65504 pass, a NaN
    and an inf never cancel). Only when it fails are the arguments searched, to name the culprit
    and count what it holds.
    """

    def culprit() -> str:
        if isinstance(text_features, (list, tuple)):
            texts = [(f"text_features[{g}]", t) for g, t in enumerate(text_features)]
        else:
            texts = [("text_features", text_features)]
        found = (describe_non_finite(name, value) for name, value in [("image_features", image_features), *texts])
        return "; ".join(f for f in found if f) or FINITE_FEATURES_MESSAGE

    extremes = [*torch.aminmax(image_features.detach()), *torch.aminmax(stacked_text.detach())]
    require(torch.isfinite(torch.stack(extremes)), FINITE_FEATURES_MESSAGE, culprit)


FINITE_FEATURES_MESSAGE = "image_features, text_features: expected finite values, got NaN or inf"


def describe_non_finite(name: str, value: Tensor) -> str:
    """``"name: expected finite values, got 2 NaN and 1 inf (first at [i, j])"``, or ``""`` if all are finite."""
    bad = ~torch.isfinite(value.detach())
    if not bool(bad.any()):
        return ""
    nan = int(torch.isnan(value.detach()).sum())
    first = [int(i) for i in bad.nonzero()[0]]
    return f"{name}: expected finite values, got {nan} NaN and {int(bad.sum()) - nan} inf (first at {first})"


def _check_text_tensor(name: str, text: Any, image_features: Tensor) -> Tensor:
    batch, dim = image_features.shape
    if not isinstance(text, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape [N, D], got {type(text).__name__}")
    if not text.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {text.dtype}")
    if text.dim() != 2 or text.shape[1] != dim or text.shape[0] == 0:
        raise ValueError(
            f"{name}: expected shape [N, D] with N >= 1 and D={dim} "
            f"(image_features is {shape_of(image_features)}), got {shape_of(text)}"
        )
    _check_device(name, text, image_features)
    return text


def _check_device(name: str, value: Tensor, image_features: Tensor) -> None:
    if value.device != image_features.device:
        raise ValueError(
            f"{name}: expected a tensor on {image_features.device} like image_features, got {value.device}"
        )


def check_single_level_text(text_features: Any, image_features: Tensor) -> Tensor:
    """Check one level of text features [N, D]."""
    return _check_text_tensor("text_features", text_features, image_features)


def check_multi_level_text(text_features: Any, image_features: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Check G levels of text features; return them stacked as [sum N_g, D] and the sizes N_g.

    Accepts a [G, N, D] tensor (a free reshape) or a list/tuple of G tensors [N_g, D].
    """
    if isinstance(text_features, Tensor):
        if not text_features.is_floating_point():
            raise TypeError(f"text_features: expected a floating-point tensor, got dtype {text_features.dtype}")
        dim = image_features.shape[1]
        if text_features.dim() != 3 or text_features.shape[2] != dim or 0 in text_features.shape[:2]:
            raise ValueError(
                f"text_features: expected shape [G, N, D] with G, N >= 1 and D={dim} "
                f"(image_features is {shape_of(image_features)}), got {shape_of(text_features)}"
            )
        _check_device("text_features", text_features, image_features)
        levels, count, _ = text_features.shape
        return text_features.reshape(levels * count, dim), (count,) * levels
    if not isinstance(text_features, (list, tuple)):
        raise TypeError(
            "text_features: expected a [G, N, D] tensor or a list of G tensors [N_g, D], "
            f"got {type(text_features).__name__}"
        )
    if len(text_features) == 0:
        raise ValueError("text_features: expected at least one level, got an empty sequence")
    per_level = [_check_text_tensor(f"text_features[{g}]", t, image_features) for g, t in enumerate(text_features)]
    sizes = tuple(t.shape[0] for t in per_level)
    stacked = per_level[0] if len(per_level) == 1 else torch.cat(per_level)
    return stacked, sizes


MAX_LOGIT_SCALE = 1e4
"""The largest logit scale the losses accept (already exponentiated).

With L2-normalised features every logit lies in ``[-s, s]`` (plus the bias), and the losses promise
finite results for logits up to 1e4 in magnitude. CLIP's learned scale stays far below: open_clip and
Hugging Face clamp it at 100 (:func:`mgll_loss.utils.clamp_logit_scale`). A larger value is almost
always the log-scale exponentiated twice or a temperature inverted twice, so it is refused.
"""


def check_scalar(name: str, value: Any, image_features: Tensor, positive: bool = False) -> Tensor:
    """Return ``value`` (a finite number or one-element tensor) as a 0-dim tensor.

    With ``positive`` (the logit scale) it must also lie in ``(0, MAX_LOGIT_SCALE]``.
    """
    expected = f"a finite positive number <= {MAX_LOGIT_SCALE:g}" if positive else "a finite number"
    hint = (
        " (the logit scale is already exponentiated: pass logit_scale.exp() of the log-scale, clamped at "
        "ln 100 as open_clip does; see mgll_loss.utils.clamp_logit_scale)"
        if positive
        else ""
    )
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name}: expected a scalar (a number or a one-element tensor), got shape {shape_of(value)}"
            )
        if not value.is_floating_point():
            value = value.to(torch.get_default_dtype())
        _check_device(name, value, image_features)
        value = value if value.dim() == 0 else value.reshape(())
        detached = value.detach()
        if not _reads_on_host(detached):
            require(_valid_scalar(detached, positive), f"{name}: expected {expected}{hint}")
            return value
        number = float(detached)  # eager, CPU: one read, checked below
    elif isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number or a one-element tensor, got {type(value).__name__}")
    elif torch.compiler.is_compiling():  # a number that changes between calls is symbolic: check it as a tensor
        tensor = torch.full((), cast(float, value), dtype=torch.float64, device=image_features.device)
        require(_valid_scalar(tensor, positive), f"{name}: expected {expected}{hint}")
        return tensor
    else:
        number = float(value)
    if not math.isfinite(number) or (positive and not 0 < number <= MAX_LOGIT_SCALE):
        raise ValueError(f"{name}: expected {expected}{hint}, got {number}")
    if isinstance(value, Tensor):
        return value
    return torch.full((), number, dtype=torch.float64, device=image_features.device)  # a fill: no host-to-device copy


def _valid_scalar(value: Tensor, positive: bool) -> Tensor:
    """bool 0-dim: ``value`` is finite (and in ``(0, MAX_LOGIT_SCALE]`` with ``positive``; NaN fails both)."""
    return (value > 0) & (value <= MAX_LOGIT_SCALE) if positive else torch.isfinite(value)


def check_per_level(name: str, value: Any, num_levels: int) -> tuple[Any, ...]:
    """Return a per-level argument as a tuple of ``num_levels`` entries (None -> all None)."""
    if value is None:
        return (None,) * num_levels
    if not isinstance(value, (list, tuple)):
        got = f"a Tensor of shape {shape_of(value)}" if isinstance(value, Tensor) else type(value).__name__
        if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == num_levels:
            hint = f"for one tensor per level stacked along dim 0, pass list({name})"
        else:
            hint = f"for the same {name} at every level, pass [{name}] * {num_levels}"
        raise TypeError(
            f"{name}: expected a list or tuple with one entry (or None) per level (G={num_levels}), got {got}; {hint}"
        )
    if len(value) != num_levels:
        raise ValueError(f"{name}: expected {num_levels} entries (one per level, G={num_levels}), got {len(value)}")
    return tuple(value)


def check_paired_texts(name: str, num_images: int, num_texts: int) -> None:
    """Labels pair text j with image j: raise ``ValueError`` unless N == B."""
    if num_texts != num_images:
        raise ValueError(
            f"{name}: labels pair text j with image j and need N == B, got N={num_texts} texts for "
            f"B={num_images} images; pass an explicit targets matrix [B, N] instead"
        )


def check_labels_or_targets(name: str, labels: Any, targets: Any) -> None:
    """Raise ``ValueError`` when a level has both ``labels`` and ``targets``."""
    if labels is not None and targets is not None:
        raise ValueError(f"{name}: give labels or an explicit targets matrix for a level, not both")


def check_labels(name: str, labels: Any, num_images: int, num_texts: int, image_features: Tensor) -> Tensor:
    """Check class ids [B] (integer) or multi-hot labels [B, C] (values 0/1)."""
    if not isinstance(labels, Tensor):
        raise TypeError(
            f"{name}: expected a tensor of class ids [B] or multi-hot labels [B, C], got {type(labels).__name__}"
        )
    _check_device(name, labels, image_features)
    check_paired_texts(name, num_images, num_texts)
    if labels.dim() == 1:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"{name}: class ids [B] must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape[0] != num_images:
            raise ValueError(f"{name}: expected class ids of shape [B] with B={num_images}, got {shape_of(labels)}")
        return labels
    if labels.dim() == 2:
        if labels.shape[0] != num_images or labels.shape[1] == 0:
            raise ValueError(
                f"{name}: expected multi-hot labels of shape [B, C] with B={num_images} and C >= 1, "
                f"got {shape_of(labels)}"
            )
        if labels.dtype != torch.bool:
            binary = (labels == 0) | (labels == 1)
            message = f"{name}: multi-hot labels {shape_of(labels)} must contain only 0 and 1"
            require(binary, message, lambda: f"{message}, found {labels[~binary][0].item()}")
        return labels
    raise ValueError(
        f"{name}: expected class ids [B] or multi-hot labels [B, C] with B={num_images}, got {shape_of(labels)}"
    )


def check_targets(name: str, targets: Any, num_images: int, num_texts: int, image_features: Tensor) -> Tensor:
    """Check an explicit target matrix [B, N] with values in [0, 1]."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"{name}: expected a tensor of shape [B, N], got {type(targets).__name__}")
    _check_device(name, targets, image_features)
    if targets.dim() != 2 or tuple(targets.shape) != (num_images, num_texts):
        raise ValueError(f"{name}: expected shape [B, N] = [{num_images}, {num_texts}], got {shape_of(targets)}")
    if targets.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {targets.dtype}")
    if targets.dtype != torch.bool:  # NaN fails both comparisons
        require(
            (targets >= 0) & (targets <= 1),
            f"{name}: target values must lie in [0, 1] (negative, > 1 or non-finite values found)",
        )
    return targets


def check_text_mask(name: str, mask: Any, num_texts: int, image_features: Tensor) -> Tensor:
    """Check one level's text mask: a boolean tensor [N] (True = text present)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: expected a boolean tensor of shape [N], got {type(mask).__name__}")
    _check_device(name, mask, image_features)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected a boolean tensor (True = text present), got dtype {mask.dtype}")
    if mask.dim() != 1 or mask.shape[0] != num_texts:
        raise ValueError(f"{name}: expected shape [N] with N={num_texts}, got {shape_of(mask)}")
    return mask


def check_multi_level_text_mask(
    text_mask: Any, sizes: tuple[int, ...], image_features: Tensor
) -> tuple[Tensor | None, ...]:
    """Return one mask (or None) per level from a [G, N] tensor or a list of G entries."""
    if isinstance(text_mask, Tensor):
        levels = len(sizes)
        if len(set(sizes)) != 1 or text_mask.dim() != 2 or tuple(text_mask.shape) != (levels, sizes[0]):
            expected = f"[G, N] = [{levels}, {sizes[0]}]" if len(set(sizes)) == 1 else "a list of G masks [N_g]"
            raise ValueError(
                f"text_mask: expected {expected} (text sizes N_g={list(sizes)}), got {shape_of(text_mask)}"
            )
        text_mask = list(text_mask.unbind(0))
    masks = check_per_level("text_mask", text_mask, len(sizes))
    return tuple(
        None if m is None else check_text_mask(f"text_mask[{g}]", m, sizes[g], image_features)
        for g, m in enumerate(masks)
    )


def check_label_sets(name: str, label_sets: Tensor, num_images: int, num_texts: int, image_features: Tensor) -> Tensor:
    """Check :class:`~mgll_loss.labels.LabelSets` [B, K] (int64 ids, -1 padding); return the plain tensor."""
    _check_device(name, label_sets, image_features)
    check_paired_texts(name, num_images, num_texts)
    if label_sets.dtype != torch.int64 or label_sets.dim() != 2 or label_sets.shape[0] != num_images:
        raise ValueError(
            f"{name}: expected label sets as int64 [B, K] with B={num_images}, got dtype {label_sets.dtype} "
            f"and shape {shape_of(label_sets)}"
        )
    return label_sets.as_subclass(Tensor)


def _is_strings(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, str) for v in value)


def reject_label_strings(name: str, labels: Any) -> None:
    """Raise a ``TypeError`` that says how to turn label strings into labels, if ``labels`` holds strings."""
    if _is_strings(labels):
        raise TypeError(
            f"{name}: got label strings ({labels!r:.60}); the losses take label tensors: build them with "
            "mgll_loss.targets.level_labels_from_strings(levels, separator=...) (G levels of B strings) or "
            "labels_from_strings(texts) for one level; the same string gives the same label on every rank"
        )


def check_level_first(text_features: Any, image_features: Tensor, targets: Any, needs_positives: bool) -> None:
    """Name the likely mistake when a [G, N, D] text tensor is really batch-first [B, G, D].

    Only where the call would fail anyway: some level pairs text j with image j (``targets`` is
    None, or a per-level sequence with a None) but N != B, while the first dimension equals B.
    """
    if not isinstance(text_features, Tensor) or text_features.dim() != 3:
        return
    batch = image_features.shape[0]
    first, second = text_features.shape[:2]
    paired = targets is None or (isinstance(targets, (list, tuple)) and any(t is None for t in targets))
    if first == batch != second and needs_positives and paired:
        raise ValueError(
            f"text_features: got shape {shape_of(text_features)}, which looks batch-first [B, G, D] with "
            f"B={batch} images and G={second} levels; the losses take level-first [G, B, D]: pass "
            "text_features.transpose(0, 1)"
        )
