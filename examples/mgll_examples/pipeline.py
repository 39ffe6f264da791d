"""From a run configuration to tensors: the data set, caption tokens, per-level labels, batch order."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .config import TrainConfig
from .data import (
    Dataset,
    Sample,
    check_image_files,
    ensure_synthetic,
    load_fundus,
    load_json_lists,
    load_table,
    load_xray,
)
from .errors import ExampleError

CLIP_CAPTION_SEPARATOR = ". "


def load_dataset(config: TrainConfig) -> Dataset:
    """The data set the flags name, every image file checked to exist (see :func:`check_image_files`)."""
    return check_image_files(_load_records(config), config.skip_bad_samples)


def _load_records(config: TrainConfig) -> Dataset:
    """The data set the flags name: a generic table, or an MGLL-Fundus / MGLL-Xray folder (synthetic or real,
    the simple layout or the authors' list files)."""
    table = bool(config.train_file or config.test_file or config.text_columns)
    if config.multi_label and not table:
        raise ExampleError("--multi-label: only for the generic table format (--train-file/--test-file/--text-columns)")
    if config.json_list and (table or config.synthetic):
        other = "--train-file" if table else "--synthetic"
        raise ExampleError(f"--json-list: reads the authors' layout in --data-dir; not with {other}")
    if table:
        if not (config.train_file and config.test_file and config.text_columns):
            raise ExampleError("--train-file, --test-file and --text-columns go together (the generic table format)")
        if config.levels:
            raise ExampleError("--levels: with the generic table format the levels are the --text-columns")
        return load_table(
            Path(config.train_file),
            Path(config.test_file),
            config.image_column,
            config.text_columns,
            config.multi_label,
        )
    if config.json_list:
        if not config.data_dir:
            raise ExampleError("--json-list: needs --data-dir, the folder that holds the list files")
        return load_json_lists(Path(config.data_dir), config.json_list, config.kind, config.levels)
    if not config.data_dir:
        raise ExampleError(
            "--data-dir: required (or --synthetic for the built-in synthetic set, or --train-file/--test-file)"
        )
    data_dir = Path(config.data_dir)
    if config.synthetic:
        num_test = max(1, config.synthetic_size // 4)
        ensure_synthetic(
            config.kind, data_dir, num_train=config.synthetic_size - num_test, num_test=num_test, seed=config.seed
        )
    elif not data_dir.is_dir():
        raise ExampleError(
            f"--data-dir {data_dir}: no such directory (pass --synthetic to generate a synthetic set there)"
        )
    loader = load_fundus if config.kind == "fundus" else load_xray
    return loader(data_dir, config.levels) if config.levels else loader(data_dir)


def captions(samples: Sequence[Sample], joined: bool) -> list[list[str]]:
    """G lists of captions, one per level; ``joined`` gives one level of all captions joined (the CLIP baseline)."""
    if joined:
        return [[CLIP_CAPTION_SEPARATOR.join(sample.texts) for sample in samples]]
    return [[sample.texts[g] for sample in samples] for g in range(len(samples[0].texts))]


def caption_tokens(samples: Sequence[Sample], tokenizer: Callable[[Sequence[str]], Tensor], joined: bool) -> Tensor:
    """Token ids [N, G, L] of every sample's captions (G = 1 when ``joined``)."""
    levels = captions(samples, joined)
    return torch.stack([tokenizer(level) for level in levels], dim=1)


def level_labels(dataset: Dataset, samples: Sequence[Sample]) -> list[Tensor]:
    """Per level: class ids int64 [N] (single-class level) or multi-hot bool [N, C] (multi-label level)."""
    labels = []
    for g, level in enumerate(dataset.levels):
        matrix = torch.from_numpy(dataset.class_matrix(samples, g))
        labels.append(matrix if level.separator else matrix.long().argmax(dim=1))
    return labels


class StepBatches(torch.utils.data.Sampler):
    """Index lists for steps ``start``..``stop - 1`` of a run, on one rank.

    Epoch ``e`` visits the samples in the order of a permutation seeded by ``(seed, e)``; step
    ``s`` takes the ``s``-th global batch of its epoch and rank ``r`` its ``r``-th slice, so the
    order depends only on the step: a resumed run sees exactly the batches it would have seen.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        steps_per_epoch: int,
        start: int,
        stop: int,
    ) -> None:
        self.num_samples, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size
        self.seed, self.steps_per_epoch, self.start, self.stop = seed, steps_per_epoch, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order, epoch = None, -1
        for step in range(self.start, self.stop):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = torch.randperm(
                    self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                )
            first = (step % self.steps_per_epoch) * self.batch_size * self.world_size + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()


def augment(images: Tensor, generator: torch.Generator, max_shift: int = 4) -> Tensor:
    """Per image a random translation by up to ``max_shift`` pixels (edges repeat) and a contrast jitter of ±10%.

    Runs in the main process with a checkpointed generator, so a resumed run draws the same values.
    """
    count = images.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=generator)
    gains = 0.9 + 0.2 * torch.rand(count, 1, 1, 1, generator=generator)
    padded = torch.nn.functional.pad(images, [max_shift] * 4, mode="replicate")
    size_h, size_w = images.shape[-2:]
    moved = (
        torch.stack(
            [
                padded[i, :, max_shift + dy : max_shift + dy + size_h, max_shift + dx : max_shift + dx + size_w]
                for i, (dy, dx) in enumerate(shifts.tolist())
            ]
        )
        if count
        else images
    )
    return moved * gains
