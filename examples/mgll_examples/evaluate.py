"""Evaluation on frozen features: zero-shot AUC from class prompts, linear-probe AUC, retrieval recall@k.

Per level ``g`` with classes ``c`` (a multi-label level has several per image):

- zero-shot AUC: score(image, c) = cos(image, prompt_c); one-vs-rest ROC AUC per class, macro mean
  over the classes with positives and negatives in the held-out split;
- own-form zero-shot AUC: the same AUC with prompts in the form the model trained on (see
  :mod:`.own_prompts`; for MGLL close to the class prompts, for the joined-caption CLIP baseline fairer);
- linear-probe AUC: per class a logistic regression on the training images' features, the same
  AUC on the held-out images;
- recall@k: image-to-text, the image's own level-g caption is among the k unique held-out captions
  closest to it; text-to-image, for each unique caption, one of its k closest images has it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from .data import Dataset, ImageTextDataset, Sample, collate
from .errors import ExampleError
from .model import ModelBundle
from .own_prompts import own_form_scores

METRICS = ("zero_shot_auc", "zero_shot_auc_own", "linear_probe_auc", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")


@torch.no_grad()
def encode_images(
    model: nn.Module,
    bundle: ModelBundle,
    samples: Sequence[Sample],
    device: torch.device,
    batch_size: int,
    workers: int,
    skip_bad: bool,
) -> tuple[Tensor, list[int]]:
    """Normalised image features [n, D] and the indices of the samples they belong to (bad ones skipped)."""
    images = ImageTextDataset(samples, bundle.image_size, bundle.mean, bundle.std)
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, collate_fn=collate, num_workers=workers)
    features, kept = [], []
    for batch in loader:
        if batch.errors and not skip_bad:
            raise ExampleError(batch.errors[0])
        if batch.indices.numel():
            features.append(model.encode_image(batch.images.to(device), normalize=True).float().cpu())
            kept.extend(batch.indices.tolist())
    if not features:
        raise ExampleError("no readable image to evaluate")
    return torch.cat(features), kept


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    tokenizer: Callable[[Sequence[str]], Tensor],
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
) -> Tensor:
    """Normalised text features [n, D]."""
    chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    return torch.cat(
        [model.encode_text(tokenizer(list(chunk)).to(device), normalize=True).float().cpu() for chunk in chunks]
    )


def macro_auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC over the columns that have both positives and negatives (None if none)."""
    values = [
        roc_auc_score(truth[:, c], scores[:, c]) for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < len(truth)
    ]
    return float(np.mean(values)) if values else None


def linear_probe_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, seed: int) -> np.ndarray:
    """Per class a logistic regression on frozen features.

    Returns the decision values [n_test, C], NaN in the column of a class that cannot be fit.
    """
    scores = np.full((len(test_x), train_y.shape[1]), np.nan)
    for c in range(train_y.shape[1]):
        if 0 < train_y[:, c].sum() < len(train_y):
            probe = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(train_x, train_y[:, c])
            scores[:, c] = probe.decision_function(test_x)
    return scores


def recall_at(similarity: Tensor, relevant: Tensor, k: int) -> float:
    """Fraction of rows (queries) with a relevant item among their top-k columns."""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
    return relevant.gather(1, top).any(dim=1).float().mean().item()


def evaluate(
    model: nn.Module,
    bundle: ModelBundle,
    dataset: Dataset,
    device: torch.device,
    *,
    batch_size: int,
    workers: int,
    skip_bad: bool,
    seed: int,
    joined: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Every metric of the module docstring, per level name (plus a ``"mean"`` row over levels).

    ``joined``: the model trained on joined captions (the CLIP baseline), for the own-form zero-shot AUC.
    """
    was_training = model.training
    model.eval()
    test_x, test_kept = encode_images(model, bundle, dataset.test, device, batch_size, workers, skip_bad)
    train_x, train_kept = encode_images(model, bundle, dataset.train, device, batch_size, workers, skip_bad)
    test = [dataset.test[i] for i in test_kept]
    train = [dataset.train[i] for i in train_kept]
    results: dict[str, dict[str, float | None]] = {}
    for g, level in enumerate(dataset.levels):
        classes = dataset.classes(g)
        prompts = [dataset.prompts.get(level.name, {}).get(name, name) for name in classes]
        truth = dataset.class_matrix(test, g)
        zero_shot = (test_x @ encode_texts(model, bundle.tokenizer, prompts, device).T).numpy()
        own = own_form_scores(model, bundle.tokenizer, test_x, dataset, g, joined, device, encode_texts)
        probe = linear_probe_scores(train_x.numpy(), dataset.class_matrix(train, g), test_x.numpy(), seed)
        keep = ~np.isnan(probe).any(axis=0)
        unique = sorted({sample.texts[g] for sample in test})
        caption_x = encode_texts(model, bundle.tokenizer, unique, device)
        relevant = torch.tensor([[sample.texts[g] == text for text in unique] for sample in test])  # [n_test, n_unique]
        image_to_text = test_x @ caption_x.T
        results[level.name] = {
            "zero_shot_auc": macro_auc(truth, zero_shot),
            "zero_shot_auc_own": macro_auc(truth, own),
            "linear_probe_auc": macro_auc(truth[:, keep], probe[:, keep]),
            "i2t_r1": recall_at(image_to_text, relevant, 1),
            "i2t_r5": recall_at(image_to_text, relevant, 5),
            "t2i_r1": recall_at(image_to_text.T, relevant.T, 1),
            "t2i_r5": recall_at(image_to_text.T, relevant.T, 5),
        }
    results["mean"] = {
        metric: float(np.mean(values))
        if (values := [r[metric] for r in results.values() if r[metric] is not None])
        else None
        for metric in METRICS
    }
    model.train(was_training)
    return results
