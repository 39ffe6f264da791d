"""Pretrained CLIP models from checkpoints: this project's ``last.pt``, the authors' released format,
and a vision tower exported by ``examples/export_vision_tower.py`` (a directory; image tower only).

The authors' checkpoints (HUANGLIZI/MGLL ``main_pretrain.py``) are
``{"model": state_dict, "optimizer", "epoch", "scaler", "args": argparse.Namespace}`` with the
open_clip model under ``"clip."``: an open_clip ``ViT-L-14`` built with ``force_custom_text=True``.
Both are read with ``torch.load(weights_only=True)``; the only class allowed beyond tensors and
plain containers is ``argparse.Namespace`` (for ``"args"``), so a file cannot run code when loaded.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ExampleError
from .exported import load_exported
from .model import ModelBundle, build_model

__all__ = ["AUTHORS_MODEL", "PretrainedModel", "authors_model", "load_pretrained"]

#: The architecture of the authors' released checkpoints.
AUTHORS_MODEL = "ViT-L-14"
_AUTHORS_PREFIX = "clip."


@dataclass
class PretrainedModel:
    """A loaded model and where it came from (``source``: "mgll-loss", "authors" or "exported")."""

    bundle: ModelBundle
    source: str
    model_name: str
    info: dict[str, Any]


def authors_model(state: Mapping[str, Any]) -> tuple[str, str]:
    """The open_clip architecture of an authors' checkpoint, and why.

    The authors build ``ViT-L-14`` with ``pretrained="openai"`` and ``force_custom_text=True``.
    open_clip >= 2.29 honours ``force_custom_text`` there (text tower under ``clip.text.``) and
    keeps the config's plain GELU; older versions load the OpenAI model as is (text tower under
    ``clip.transformer.``, QuickGELU). No weight records the activation, so the layout decides.
    """
    if any(str(key).startswith("clip.text.") for key in state):
        return AUTHORS_MODEL, "text tower under clip.text.: open_clip >= 2.29, plain GELU"
    return f"{AUTHORS_MODEL}-quickgelu", "text tower under clip.transformer.: open_clip < 2.29, QuickGELU"


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ExampleError(f"--checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, or holding objects weights_only refuses
        detail = " ".join(str(error).split())[:300]
        raise ExampleError(
            f"--checkpoint {path}: not a readable checkpoint ({type(error).__name__}: {detail})"
        ) from error


def _load_state(bundle: ModelBundle, state: dict[str, Any], path: Path, model_name: str) -> None:
    try:
        bundle.model.load_state_dict(state)
    except RuntimeError:
        expected = bundle.model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        shapes = [key for key in set(expected) & set(state) if tuple(expected[key].shape) != tuple(state[key].shape)]
        detail = "; ".join(
            f"{label} {len(keys)} (first: {keys[0]})"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("other shapes", sorted(shapes)),
            )
            if keys
        )
        raise ExampleError(
            f"--checkpoint {path}: does not fit the {model_name} model ({detail}); "
            "pass the architecture it was trained with as --model"
        ) from None


def load_pretrained(path: Path, model: str | None = None) -> PretrainedModel:
    """The model in ``path`` (either layout), weights loaded; ``model`` overrides the architecture name."""
    if path.is_dir():
        bundle, info = load_exported(path)
        return PretrainedModel(bundle, "exported", f"CLIPVisionModelWithProjection ({path.name})", info)
    payload = _read(path)
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise ExampleError(
            f"--checkpoint {path}: expected a dict with a 'model' state dict (this project's last.pt "
            "or the authors' format)"
        )
    if isinstance(payload.get("config"), dict):  # this project's last.pt
        config = payload["config"]
        name = model or config["model"]
        bundle = build_model(
            name, init_logit_scale=config.get("init_logit_scale"), init_logit_bias=config.get("init_logit_bias")
        )
        _load_state(bundle, payload["model"], path, name)
        return PretrainedModel(bundle, "mgll-loss", name, {"step": payload.get("step"), "loss": config.get("loss")})
    if "args" not in payload:
        raise ExampleError(
            f"--checkpoint {path}: neither this project's last.pt (no 'config') nor the authors' "
            f"format (no 'args'); it has: {', '.join(map(str, payload))}"
        )
    state = {
        key[len(_AUTHORS_PREFIX) :]: value for key, value in payload["model"].items() if key.startswith(_AUTHORS_PREFIX)
    }
    if not state:
        raise ExampleError(
            f"--checkpoint {path}: the authors' format keeps the open_clip model under 'clip.'; no such key in 'model'"
        )
    name = model or authors_model(payload["model"])[0]
    bias = 0.0 if "logit_bias" in state else None  # the value comes with the state dict
    bundle = build_model(name, init_logit_bias=bias, custom_text=any(key.startswith("text.") for key in state))
    _load_state(bundle, state, path, name)
    args = payload["args"]
    return PretrainedModel(
        bundle,
        "authors",
        name,
        {"epoch": payload.get("epoch"), "args": vars(args) if isinstance(args, argparse.Namespace) else None},
    )
