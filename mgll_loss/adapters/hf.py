"""Hugging Face adapter: :class:`MultiGranularHFCLIP` for ``CLIPModel`` / ``SiglipModel`` and ``Trainer`` helpers.

``pip install "mgll-loss[hf]"``. The model's own ``forward`` (which builds the logits and, with
``return_loss``, its CLIP/SigLIP loss) is never called: the adapter calls
``get_image_features`` once and ``get_text_features`` once on all G levels.

For the ``Trainer``: :func:`collate_levels` builds level-first batches, :func:`compute_mgll_loss`
is the loss step, and ``MGLLTrainer`` (a ``transformers.Trainer`` subclass, created on first
access so this module imports without transformers) uses them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..labels import LabelSets, labels_from_strings
from ..losses import MGLLLoss
from .base import LevelTokens, MultiGranularCLIP, check_images, flatten_level_texts, require, stack_levels

__all__ = [
    "MultiGranularHFCLIP",
    "tokenize_levels",
    "collate_levels",
    "compute_mgll_loss",
]  # and MGLLTrainer, created lazily

_EXTRA = "hf"


def _pooled(output: Any) -> Tensor:
    """transformers < 5 returns the projected features, >= 5 an output whose ``pooler_output`` holds them."""
    return output if isinstance(output, Tensor) else output.pooler_output


class MultiGranularHFCLIP(MultiGranularCLIP):
    """Wrap a ``transformers`` ``CLIPModel`` or ``SiglipModel`` so it feeds :class:`~mgll_loss.MGLLLoss`.

    Any model with ``get_image_features``, ``get_text_features`` and a ``logit_scale`` parameter
    works; a ``logit_bias`` parameter (SigLIP) is returned too and feeds the point-wise loss.

    Args:
        model: the Hugging Face model, not wrapped in DDP (wrap this adapter instead).

    Shape:
        pixel_values [B, C, H, W]; input_ids and attention_mask [G, B, L] or sequences of G
        [B, L]; returns ``image_features`` [B, D], ``text_features`` [G, B, D] (L2-normalised),
        ``logit_scale`` (exponentiated) and ``logit_bias`` for SigLIP.

    Example:
        >>> from transformers import CLIPConfig, CLIPModel
        >>> config = CLIPConfig(
        ...     text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                      num_attention_heads=2, max_position_embeddings=8),
        ...     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                        num_attention_heads=2, image_size=16, patch_size=8),
        ...     projection_dim=8)
        >>> wrapper = MultiGranularHFCLIP(CLIPModel(config))
        >>> ids = torch.randint(1, 64, (3, 2, 8))
        >>> outputs = wrapper(torch.randn(2, 3, 16, 16), ids, torch.ones_like(ids))
        >>> tuple(outputs["text_features"].shape)
        (3, 2, 8)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(
            model,
            framework="transformers",
            extra=_EXTRA,
            kind="a CLIPModel/SiglipModel",
            methods=("get_image_features", "get_text_features"),
        )

    def encode_image(self, images: Tensor) -> Tensor:
        return _pooled(self.model.get_image_features(pixel_values=images))

    def encode_text(self, tokens: Tensor, mask: Tensor | None) -> Tensor:
        return _pooled(self.model.get_text_features(input_ids=tokens, attention_mask=mask))

    def forward(
        self, pixel_values: Tensor, input_ids: LevelTokens, attention_mask: LevelTokens | None = None
    ) -> dict[str, Tensor]:
        """Features for ``MGLLLoss`` from pixel values [B, C, H, W] and tokens (and mask) [G, B, L]."""
        batch_size = check_images("pixel_values", pixel_values)
        tokens = stack_levels("input_ids", input_ids, batch_size)
        mask = None if attention_mask is None else stack_levels("attention_mask", attention_mask, batch_size)
        return self.features(pixel_values, tokens, mask)


def tokenize_levels(tokenizer: Any, levels: Sequence[Sequence[str]], **tokenizer_options: Any) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` [G, B, L] for G levels of B strings, in one tokenizer call.

    Args:
        tokenizer: a Hugging Face tokenizer.
        levels: G sequences of B captions.
        tokenizer_options: passed to the tokenizer; default ``padding=True, truncation=True``
            (SigLIP checkpoints expect ``padding="max_length"``).

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> vocab = {"[PAD]": 0, "[UNK]": 1, "normal": 2, "abnormal": 3}
        >>> backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> # in practice: tokenizer = AutoTokenizer.from_pretrained(...)
        >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]")
        >>> batch = tokenize_levels(tokenizer, [["normal", "abnormal"], ["normal normal", "abnormal"]])
        >>> tuple(batch["input_ids"].shape), batch["attention_mask"][1].tolist()
        ((2, 2, 2), [[1, 1], [1, 0]])
    """
    flat, num_levels, batch_size = flatten_level_texts(levels)
    options = {"padding": True, "truncation": True, **tokenizer_options, "return_tensors": "pt"}
    encoded = tokenizer(flat, **options)
    return {
        key: encoded[key].reshape(num_levels, batch_size, -1)
        for key in ("input_ids", "attention_mask")
        if key in encoded
    }


def collate_levels(features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Data collator: B examples -> a level-first batch for :class:`MultiGranularHFCLIP`.

    Each example holds ``pixel_values`` [C, H, W], ``input_ids`` [G, L], optionally
    ``attention_mask`` [G, L] and ``labels``: G per-level labels, each a class id, a multi-hot
    vector, a label string, a list of label strings (a label set), or None (no labels at this
    level, e.g. free text: then None in every example). Returns ``pixel_values`` [B, C, H, W],
    ``input_ids``/``attention_mask`` [G, B, L] and ``labels`` as a list of G entries: tensors
    ([B] or [B, C]), class ids hashed from the strings (:func:`~mgll_loss.labels.labels_from_strings`),
    :class:`~mgll_loss.labels.LabelSets`, or None.

    Example:
        >>> examples = [dict(pixel_values=torch.zeros(3, 8, 8), input_ids=torch.ones(3, 5, dtype=torch.long),
        ...                  labels=[i % 2, torch.tensor([1, 0, i % 2]), None]) for i in range(4)]
        >>> batch = collate_levels(examples)
        >>> tuple(batch["input_ids"].shape), [None if y is None else tuple(y.shape) for y in batch["labels"]]
        ((3, 4, 5), [(4,), (4, 3), None])
    """
    if len(features) == 0:
        raise ValueError("features: expected at least one example, got none")
    batch: dict[str, Any] = {"pixel_values": torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])}
    for key in ("input_ids", "attention_mask"):
        if key in features[0]:
            batch[key] = torch.stack([torch.as_tensor(f[key]) for f in features], dim=1)
    if "labels" in features[0]:
        examples = [f["labels"] for f in features]
        counts = {len(labels) for labels in examples}
        if len(counts) > 1:
            raise ValueError(f"labels: expected G per-level labels in every example, got {[len(y) for y in examples]}")
        batch["labels"] = [_collate_level(g, level) for g, level in enumerate(zip(*examples, strict=True))]
    return batch


def _collate_level(level: int, values: Sequence[Any]) -> Tensor | None:
    """One level's labels of B examples: None, hashed strings, label sets, or stacked tensors."""
    missing = [value is None for value in values]
    if all(missing):
        return None
    if any(missing):
        raise ValueError(
            f"labels[{level}]: examples {[i for i, m in enumerate(missing) if m]} have None and the others a label; "
            "use None in every example for a level without labels, or a negative class id for an unlabelled image"
        )
    if all(isinstance(value, str) for value in values):
        return labels_from_strings(list(values))
    if all(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) for value in values):
        return LabelSets.from_lists(list(values))
    return torch.stack([torch.as_tensor(value) for value in values])


def _level_list(name: str, value: None | Tensor | Sequence[Any]) -> list[Any] | None:
    """Per-level labels or masks: a level-first tensor is split into its G entries."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.dim() < 2:
            raise ValueError(
                f"{name}: expected G per-level entries (a [G, B, ...] tensor or a list), got shape {tuple(value.shape)}"
            )
        return list(value.unbind(0))
    return list(value)


def compute_mgll_loss(
    model: nn.Module, inputs: Mapping[str, Any], loss_fn: nn.Module, return_outputs: bool = False
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """One loss step: ``labels`` (and ``text_mask``) from the batch, the rest to the adapter.

    ``labels`` is a list of G per-level labels or a level-first tensor [G, B] / [G, B, C];
    missing means plain CLIP targets. Returns the loss, or ``(loss, features)``.

    Example:
        >>> import torch.nn.functional as F
        >>> def model(pixel_values, input_ids):  # stands in for a MultiGranularHFCLIP
        ...     return dict(image_features=F.normalize(torch.randn(4, 8), dim=-1),
        ...                 text_features=F.normalize(torch.randn(2, 4, 8), dim=-1), logit_scale=torch.tensor(10.0))
        >>> batch = dict(pixel_values=None, input_ids=None, labels=torch.tensor([[0, 0, 1, 1], [0, 1, 2, 2]]))
        >>> compute_mgll_loss(model, batch, MGLLLoss()).shape
        torch.Size([])
    """
    model_inputs = dict(inputs)
    labels = _level_list("labels", model_inputs.pop("labels", None))
    text_mask = _level_list("text_mask", model_inputs.pop("text_mask", None))
    features = model(**model_inputs)
    loss = loss_fn(**features, labels=labels, text_mask=text_mask)
    return (loss, features) if return_outputs else loss


@functools.cache
def _trainer_class() -> type:
    transformers: Any = require("transformers", _EXTRA, "MGLLTrainer")  # untyped: its classes are bases below

    class ClampLogitScale(transformers.TrainerCallback):
        """Clamp the wrapped model's logit scale after every optimiser step."""

        def __init__(self, max_value: float) -> None:
            self.max_value = max_value

        def on_step_end(
            self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any
        ) -> None:
            adapter = getattr(model, "module", model)  # unwrap DDP
            if isinstance(adapter, MultiGranularCLIP):
                adapter.clamp_logit_scale(self.max_value)

    class MGLLTrainer(transformers.Trainer):
        """A ``transformers.Trainer`` whose loss is :class:`~mgll_loss.MGLLLoss`.

        Train a :class:`MultiGranularHFCLIP` with batches from :func:`collate_levels`. Extra
        keywords: ``mgll_loss``, the loss module (default ``MGLLLoss()``), and
        ``max_logit_scale`` (100; None turns the clamp after each step off). ``labels`` and
        ``text_mask`` are label columns, so ``remove_unused_columns`` keeps them.

        Evaluation reports ``eval_loss`` (the MGLL loss of each batch, with or without
        ``text_mask`` or ``labels``); it collects no predictions. ``save_model`` and checkpoints
        save the wrapped ``PreTrainedModel`` with ``save_pretrained`` (``config.json`` and its own
        weight names), so ``CLIPModel.from_pretrained(output_dir)`` loads the trained model;
        ``resume_from_checkpoint`` and ``load_best_model_at_end`` load it back into the wrapper.
        """

        model: nn.Module

        def __init__(
            self, *args: Any, mgll_loss: nn.Module | None = None, max_logit_scale: float | None = 100.0, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.mgll_loss = MGLLLoss() if mgll_loss is None else mgll_loss
            if self.args.label_names is None:
                self.label_names = ["labels", "text_mask"]
            if max_logit_scale is not None:
                self.add_callback(ClampLogitScale(max_logit_scale))

        def compute_loss(
            self,
            model: nn.Module,
            inputs: Mapping[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
            return compute_mgll_loss(model, inputs, self.mgll_loss, return_outputs)

        def prediction_step(
            self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
        ) -> tuple[Tensor | None, None, None]:
            # transformers computes a loss only when every label name is in the batch; this loss needs none
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss = cast(Tensor, self.compute_loss(model, inputs))
            return loss.detach(), None, None

        @contextlib.contextmanager
        def _wrapped_pretrained_model(self) -> Any:
            """Let transformers save and load the wrapped ``PreTrainedModel`` instead of the adapter."""
            adapter = self.accelerator.unwrap_model(self.model)
            inner = getattr(adapter, "model", None)
            if not isinstance(adapter, MultiGranularCLIP) or not isinstance(inner, transformers.PreTrainedModel):
                yield
                return
            wrapper, self.model = self.model, inner
            try:
                yield
            finally:
                self.model = wrapper

        def _save(self, output_dir: str | None = None, state_dict: dict[str, Tensor] | None = None) -> None:
            if state_dict is not None:  # from a DeepSpeed/FSDP wrapper: the adapter's keys, "model." first
                state_dict = {key[len("model.") :]: v for key, v in state_dict.items() if key.startswith("model.")}
            with self._wrapped_pretrained_model():
                super()._save(output_dir, state_dict)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            with self._wrapped_pretrained_model():
                super()._load_from_checkpoint(resume_from_checkpoint, model)

        def _load_best_model(self) -> None:
            with self._wrapped_pretrained_model():
                super()._load_best_model()

    MGLLTrainer.__module__ = __name__
    return MGLLTrainer


def __getattr__(name: str) -> Any:
    if name == "MGLLTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
