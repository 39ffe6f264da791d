"""The image-tower weights of an open_clip checkpoint, in each layout people save one.

- ``open_clip_train``: ``{"epoch", "name", "state_dict", "optimizer", ...}``, keys with ``module.``
  when saved from DDP;
- this project's examples (``last.pt``): ``{"config", "step", "model", "optimizer", ...}``;
- the MGLL authors' release: ``{"model", "optimizer", "epoch", "args"}`` with the open_clip model
  under ``clip.`` (so the image tower is ``clip.visual.*``);
- a bare ``model.state_dict()``.

Files are read with ``torch.load(weights_only=True)`` (only ``argparse.Namespace`` is allowed beyond
tensors and containers, for the authors' ``"args"``), so loading one cannot run code.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["read_checkpoint", "vision_state_dict", "load_open_clip_checkpoint"]

_PREFIXES = ("module.", "clip.")


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The object saved at ``path``, loaded on the CPU with ``weights_only=True``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch file, truncated, or holding objects ``weights_only`` refuses.

    Example:
        >>> import argparse, tempfile
        >>> path = tempfile.mkdtemp() + "/checkpoint.pth"
        >>> torch.save({"model": {"clip.visual.proj": torch.zeros(2, 2)}, "args": argparse.Namespace(lr=1e-4)}, path)
        >>> sorted(read_checkpoint(path))
        ['args', 'model']
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file {os.fspath(path)!r}")
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        if safe_globals is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or objects weights_only refuses
        detail = " ".join(str(error).split())[:300]
        if isinstance(error, KeyError) or not detail:  # pickle's KeyError(<first byte>) for a non-torch file
            detail = "not a torch.save file"
        raise ValueError(f"checkpoint {os.fspath(path)!r}: not a readable checkpoint ({detail})") from error


def vision_state_dict(payload: Mapping[str, Any]) -> tuple[dict[str, Tensor], str]:
    """The image tower's state dict (keys relative to ``model.visual``) and the layout's name.

    Args:
        payload: a loaded checkpoint (any layout of the module docstring).

    Returns:
        ``(state, layout)`` with ``layout`` one of ``"open_clip_train"``, ``"mgll-loss examples"``,
        ``"MGLL authors"`` (``model`` keys under ``clip.``), ``"model state dict"`` (a ``model`` entry
        of another kind), ``"state dict"``.

    Raises:
        ValueError: no ``visual.*`` keys under any known prefix (the message lists what there is).

    Example:
        >>> payload = {"state_dict": {"module.visual.proj": torch.zeros(2, 2), "module.logit_scale": torch.zeros(())}}
        >>> state, layout = vision_state_dict(payload)
        >>> list(state), layout
        (['proj'], 'open_clip_train')
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"checkpoint: expected a dict, got {type(payload).__name__}")
    if isinstance(payload.get("state_dict"), Mapping):
        state, layout = payload["state_dict"], "open_clip_train"
    elif isinstance(payload.get("model"), Mapping):
        state = payload["model"]
        if isinstance(payload.get("config"), Mapping):
            layout = "mgll-loss examples"
        elif any(str(key).startswith("clip.") for key in state):
            layout = "MGLL authors"
        else:
            layout = "model state dict"
    else:
        state, layout = payload, "state dict"
    keys = [str(key) for key in state]
    for key in keys:
        bare = key
        while bare.startswith(_PREFIXES):
            bare = bare.split(".", 1)[1]
        if bare.startswith("visual."):
            prefix = key[: len(key) - len(bare)] + "visual."
            break
    else:
        raise ValueError(
            f"checkpoint ({layout}): no image tower weights (visual.*, under module./clip. or not); "
            f"its keys begin {keys[:5]}"
        )
    visual = {key[len(prefix) :]: value for key, value in state.items() if str(key).startswith(prefix)}
    return visual, layout


def load_open_clip_checkpoint(model: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> str:
    """Load a checkpoint's image-tower weights into ``model.visual`` (strictly); returns the layout's name.

    Only the image tower is read, so a checkpoint whose text tower differs (e.g. the authors'
    ``CustomTextCLIP``) loads into a plain ``CLIP`` of the same vision architecture. The
    architecture itself (and the activation, which no weight records) is the model's: build it
    with the name and ``quick_gelu`` setting the checkpoint was trained with.

    Args:
        model: an open_clip model (or its ``.visual``) of the checkpoint's architecture.
        checkpoint: a path (read with :func:`read_checkpoint`) or an already loaded dict.

    Raises:
        ValueError: unreadable file, no image tower, or weights that do not fit (missing and
            unexpected keys and other shapes are named).
        TypeError: ``model`` is not a module.

    Example:
        >>> import open_clip
        >>> model = open_clip.CLIP(
        ...     embed_dim=8, vision_cfg=dict(layers=1, width=16, head_width=8, patch_size=8, image_size=16),
        ...     text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
        >>> payload = {"model": {f"clip.{k}": v for k, v in model.state_dict().items()}, "args": None}
        >>> load_open_clip_checkpoint(model, payload)
        'MGLL authors'
    """
    visual = getattr(model, "visual", model)
    if not isinstance(visual, nn.Module):
        raise TypeError(f"model: expected an open_clip model (or its .visual), got {type(model).__name__}")
    payload = checkpoint if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    state, layout = vision_state_dict(payload)
    expected = visual.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = sorted(key for key in set(expected) & set(state) if tuple(expected[key].shape) != tuple(state[key].shape))
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{label} {len(keys)} (first: {keys[0]})"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("other shapes", shapes))
            if keys
        )
        raise ValueError(f"checkpoint ({layout}): its image tower does not fit the model's ({detail})")
    visual.load_state_dict(state)
    return layout
