"""The training loop: AdamW, warmup + cosine, AMP, clipping, logit-scale clamp, DDP, checkpoints, resume."""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor, nn
from tqdm import tqdm

from mgll_loss import MGLLLoss, SoftCLIPLoss, accumulate_step
from mgll_loss.adapters.open_clip import MultiGranularOpenCLIP

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, check_loss_options
from .data import Dataset, ImageTextDataset, collate
from .errors import ExampleError
from .missing_texts import TextDropper
from .model import ModelBundle
from .pipeline import CLIP_CAPTION_SEPARATOR, StepBatches, augment, caption_tokens, level_labels
from .runs import CHECKPOINT_NAME, check_same_data, data_identity, resume_schedule
from .world import TrainingWorld


@dataclass
class TrainResult:
    """What a run produced: per-step records (``step``, ``loss``, terms, ``lr``, ``logit_scale``)."""

    history: list[dict[str, float]]
    steps: int
    total_steps: int
    seconds: float
    skipped_samples: int = 0
    checkpoint: Path | None = None


def learning_rate(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return 0.5 * config.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings' scale parameters and the logit scale (as open_clip)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "logit_scale" in name or "logit_bias" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _loss_function(config: TrainConfig, world: TrainingWorld) -> nn.Module:
    distributed = dict(
        local_loss=world.world_size > 1,
        gather_with_grad=world.world_size > 1,
        rank=world.rank,
        world_size=world.world_size,
    )
    if config.backend == "triton" and world.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ExampleError(f"--backend triton: runs on CUDA devices only, this run is on {world.device}")
    try:
        if config.loss == "clip" and config.drop_texts:  # == ClipLoss, and drops the samples left without text
            return SoftCLIPLoss(backend=config.backend, **distributed)
        if config.loss == "clip":
            return open_clip.ClipLoss(cache_labels=True, **distributed)
        return MGLLLoss(backend=config.backend, **config.loss_options(), **distributed)
    except ValueError as error:  # e.g. the triton backend without the triton package
        raise ExampleError(f"--backend {config.backend}: {error}") from None


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _terms(
    loss_fn: nn.Module, features: dict[str, Tensor], labels: list[Tensor], clip: bool, mask: Tensor | None
) -> dict[str, Tensor]:
    if clip:
        image, text, scale = features["image_features"], features["text_features"][0], features["logit_scale"]
        if mask is None:
            return {"clip_loss": loss_fn(image, text, scale)}
        return {"clip_loss": loss_fn(image, text, scale, text_mask=mask)}
    return loss_fn(**features, labels=labels, text_mask=mask, output_dict=True)


def train(config: TrainConfig, dataset: Dataset, bundle: ModelBundle, world: TrainingWorld) -> TrainResult:
    """Train ``bundle.model`` in place on ``dataset.train``; checkpoint to ``<output-dir>/last.pt``."""
    samples = dataset.train
    check_loss_options(config, len(dataset.levels))
    rank_batch = config.batch_size * config.accum_steps  # images per rank and optimiser step
    steps_per_epoch = len(samples) // (rank_batch * world.world_size)
    if steps_per_epoch == 0:
        raise ExampleError(
            f"the training split has {len(samples)} samples, fewer than one global batch "
            f"({config.batch_size} x {config.accum_steps} accumulation steps x {world.world_size} processes): "
            "lower --batch-size or --accum-steps"
        )
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    clip = config.loss == "clip"
    tokens = caption_tokens(samples, bundle.tokenizer, joined=clip)  # [N, G, L]
    labels = level_labels(dataset, samples)
    dropper = None
    if config.drop_texts:
        dropper = TextDropper(config.drop_texts, config.seed, samples, bundle.tokenizer, clip, CLIP_CAPTION_SEPARATOR)

    wrapper = MultiGranularOpenCLIP(bundle.model).to(world.device)
    model = nn.parallel.DistributedDataParallel(wrapper) if world.world_size > 1 else wrapper
    optimizer = _optimizer(wrapper, config)
    loss_fn = _loss_function(config, world)
    generator = torch.Generator().manual_seed(config.seed * 1_000 + world.rank)
    output_dir = Path(config.output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME
    history: list[dict[str, float]] = []
    start = 0
    data = data_identity(config, dataset)
    if config.resume:
        state = load_checkpoint(Path(config.resume), config, world.world_size)
        check_same_data(Path(config.resume), state.get("data"), data)
        schedule_change = resume_schedule(Path(config.resume), state["config"], config, int(state["step"]), total_steps)
        if schedule_change and world.is_main:
            print(schedule_change, flush=True)
        wrapper.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["augment_rng"][world.rank])
        history, start = list(state["history"]), int(state["step"])
    stop = total_steps if config.stop_after is None else min(total_steps, start + config.stop_after)

    images = ImageTextDataset(samples, bundle.image_size, bundle.mean, bundle.std)
    sampler = StepBatches(
        len(samples), rank_batch, world.rank, world.world_size, config.seed, steps_per_epoch, start, stop
    )
    loader = torch.utils.data.DataLoader(
        images,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=config.workers,
        pin_memory=world.device.type == "cuda",
    )
    wrapper.train()
    skipped, began = 0, time.perf_counter()
    progress = tqdm(total=stop - start, desc=f"{config.loss} {config.kind}", disable=not world.is_main, leave=False)
    try:
        # strict=False: the schedule ends the run; the loader may hold more batches than steps are left
        for step, batch in zip(range(start, stop), loader, strict=False):
            skipped += _check_batch(batch.errors, config, world)
            if world.any(batch.indices.numel() == 0):
                continue
            record = _step(
                step,
                batch,
                model,
                wrapper,
                optimizer,
                loss_fn,
                tokens,
                labels,
                generator,
                config,
                world,
                total_steps,
                clip,
                dropper,
            )
            history.append(record)
            progress.update()
            progress.set_postfix(loss=f"{record['loss']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == stop:
                _save(checkpoint_path, config, world, wrapper, optimizer, generator, history, step + 1, data)
    finally:
        progress.close()  # before any error message, so it starts on its own line
    return TrainResult(history, stop, total_steps, time.perf_counter() - began, skipped, checkpoint_path)


def _check_batch(errors: list[str], config: TrainConfig, world: TrainingWorld) -> int:
    """Stop every rank at an unreadable image (naming it), or count it with ``--skip-bad-samples``."""
    if world.any(bool(errors)) and not config.skip_bad_samples:
        raise ExampleError(errors[0] if errors else "another process stopped at an unreadable image")
    return len(errors)


def _step(
    step: int,
    batch: Any,
    model: nn.Module,
    wrapper: MultiGranularOpenCLIP,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    tokens: Tensor,
    labels: list[Tensor],
    generator: torch.Generator,
    config: TrainConfig,
    world: TrainingWorld,
    total_steps: int,
    clip: bool,
    dropper: TextDropper | None,
) -> dict[str, float]:
    """One optimiser step on the batch's good samples; returns the step's record (losses averaged over ranks)."""
    index = batch.indices
    lr = learning_rate(step, config, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    pixels = augment(batch.images, generator).to(world.device, non_blocking=True)
    texts, mask = tokens[index].transpose(0, 1), None
    if dropper is not None:
        texts, mask = dropper(step, index, texts, world.rank)
        mask = mask.to(world.device)
    texts = texts.to(world.device)
    step_labels = [label[index].to(world.device) for label in labels]
    optimizer.zero_grad(set_to_none=True)
    if config.accum_steps > 1:
        terms = _accumulated_terms(model, loss_fn, pixels, texts, step_labels, mask, config, world.device, clip)
    else:
        with _autocast(config, world.device):
            features = model(pixels, texts)
        terms = _terms(loss_fn, features, step_labels, clip, mask)
        sum(terms.values()).backward()
    total = sum(terms.values())
    if config.grad_clip > 0:
        nn.utils.clip_grad_norm_(wrapper.parameters(), config.grad_clip)
    optimizer.step()
    wrapper.clamp_logit_scale()
    record = {
        "step": step + 1,
        "loss": world.mean(total.item()),
        "lr": lr,
        "logit_scale": wrapper.model.logit_scale.exp().item(),
    }
    if getattr(wrapper.model, "logit_bias", None) is not None:
        record["logit_bias"] = wrapper.model.logit_bias.item()
    record.update({name: world.mean(value.item()) for name, value in terms.items()})
    return record


# --- --accum-steps: feature-cached gradient accumulation ------------------------------------------


def _accumulated_terms(
    model: nn.Module,
    loss_fn: nn.Module,
    pixels: Tensor,
    texts: Tensor,
    labels: list[Tensor],
    mask: Tensor | None,
    config: TrainConfig,
    device: torch.device,
    clip: bool,
) -> dict[str, Tensor]:
    """The loss of all K x --batch-size images, encoded --batch-size at a time; gradients into ``.grad``."""
    micro_batches = [
        dict(images=p, texts=t)
        for p, t in zip(pixels.split(config.batch_size), texts.split(config.batch_size, dim=1), strict=True)
    ]

    def loss(
        labels: list[Tensor], output_dict: bool, text_mask: Tensor | None = None, **features: Tensor
    ) -> dict[str, Tensor]:
        return _terms(loss_fn, features, labels, clip, text_mask)

    with _autocast(config, device):  # the encoders only: accumulate_step computes the loss outside autocast
        return accumulate_step(
            model,
            loss,
            micro_batches,
            labels=labels,
            text_mask=mask,  # type: ignore[return-value]
            output_dict=True,
        )


def _save(
    path: Path,
    config: TrainConfig,
    world: TrainingWorld,
    wrapper: MultiGranularOpenCLIP,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    history: list[dict[str, float]],
    step: int,
    data: dict[str, Any],
) -> None:
    """Rank 0 writes the checkpoint (with every rank's augmentation generator state and the data set's identity)."""
    states = [generator.get_state()]
    if world.world_size > 1:
        states = [torch.empty_like(states[0]) for _ in range(world.world_size)]
        torch.distributed.all_gather_object(states, generator.get_state())
    if world.is_main:
        payload: dict[str, Any] = {
            "config": config.to_dict(),
            "world_size": world.world_size,
            "step": step,
            "model": wrapper.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "augment_rng": states,
            "history": history,
            "data": data,
        }
        save_checkpoint(path, payload)
    world.barrier()
