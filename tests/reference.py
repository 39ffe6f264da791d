"""Plain, slow reference of the MGLL loss (docs/math.md; shapes as in the ``mgll_loss.functional`` docstrings).

Written independently of ``mgll_loss`` for readability, not speed:

* everything is computed in float64;
* positive masks are built with explicit Python loops over (image, text) pairs;
* a text mask is applied by literally removing the absent columns (``index_select``);
* the soft CLIP loss is computed one row / one column at a time with ``log_softmax`` on 1-D slices;
* the point-wise loss uses the explicit BCE-with-logits formula ``max(z,0) - z*y + log(1+exp(-|z|))``;
* the smooth KL uses ``log_softmax`` and ``log m = logsumexp_g log p^g - log G``.

Every function is differentiable w.r.t. the features, the logit scale and the logit bias, so that
gradients can be compared with autograd.

Reference: Li, Wang, Farsiu, Kinahan, "Boosting Medical Visual Understanding From Multi-Granular
Language Learning" (MGLL), arXiv 2511.15943, ICLR 2026, Eqs. 1-7.
"""

from __future__ import annotations

import math

import torch

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _as_float64(x):
    """Tensor -> float64 tensor (autograd graph kept); Python number -> float64 0-dim tensor."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.to(DTYPE).reshape(())
    return torch.tensor(float(x), dtype=DTYPE)


def _label_sets(multi_hot: torch.Tensor) -> list:
    """Multi-hot [B, C] -> list of B Python sets of the label indices that are switched on."""
    rows = multi_hot.detach().cpu().tolist()
    return [{c for c, v in enumerate(row) if v != 0 and v is not False} for row in rows]


# --------------------------------------------------------------------------------------------
# positive masks
# --------------------------------------------------------------------------------------------
def ref_positive_mask(num_images: int, num_texts: int, labels=None, targets=None, match="exact"):
    """Positive mask P [B, N] in float64 (no grad), built pair by pair.

    * ``labels is None and targets is None``: identity (needs N == B);
    * ``labels`` 1-D: class ids, ``P_ij = [y_i == y_j]``;
    * ``labels`` 2-D: multi-hot; ``exact`` = identical label sets, ``overlap`` = at least one shared
      label (two empty sets count as identical -> positive), ``jaccard`` = |A & B| / |A | B| with
      empty | empty -> 1;
    * ``targets``: an explicit [B, N] matrix, used as is.
    """
    if labels is not None and targets is not None:
        raise ValueError("labels and targets are mutually exclusive")
    B, N = num_images, num_texts
    P = [[0.0] * N for _ in range(B)]
    if targets is not None:
        t = targets.detach().to(DTYPE).cpu().tolist()
        for i in range(B):
            for j in range(N):
                P[i][j] = float(t[i][j])
    elif labels is None:
        if N != B:
            raise ValueError("identity positives need N == B")
        for i in range(B):
            for j in range(N):
                P[i][j] = 1.0 if i == j else 0.0
    elif labels.dim() == 1:
        if N != B:
            raise ValueError("labels need N == B")
        ids = labels.detach().cpu().tolist()
        for i in range(B):
            for j in range(N):
                P[i][j] = 1.0 if ids[i] == ids[j] else 0.0
    elif labels.dim() == 2:
        if N != B:
            raise ValueError("labels need N == B")
        sets = _label_sets(labels)
        for i in range(B):
            for j in range(N):
                a, b = sets[i], sets[j]
                if match == "exact":
                    P[i][j] = 1.0 if a == b else 0.0
                elif match == "overlap":
                    both_empty = len(a) == 0 and len(b) == 0
                    P[i][j] = 1.0 if (len(a & b) > 0 or both_empty) else 0.0
                elif match == "jaccard":
                    union = a | b
                    P[i][j] = 1.0 if len(union) == 0 else len(a & b) / len(union)
                else:
                    raise ValueError(f"unknown match {match!r}")
    else:
        raise ValueError("labels must be 1-D (class ids) or 2-D (multi-hot)")
    return torch.tensor(P, dtype=DTYPE).reshape(B, N)


def _present_columns(num_texts: int, text_mask) -> torch.Tensor:
    """Indices of the present text columns (all of them when ``text_mask`` is None)."""
    if text_mask is None:
        return torch.arange(num_texts)
    keep = [j for j, present in enumerate(text_mask.detach().cpu().tolist()) if present]
    return torch.tensor(keep, dtype=torch.long)


def _level_logits_and_mask(image, text, scale, bias, labels, targets, text_mask, match):
    """Logits Z [B, N_present] and positive mask P [B, N_present] of one level, absent columns removed."""
    V = image.to(DTYPE)
    T = text.to(DTYPE)
    B, N = V.shape[0], T.shape[0]
    P = ref_positive_mask(B, N, labels=labels, targets=targets, match=match)
    s = _as_float64(scale)
    Z = s * (V @ T.t())
    if bias is not None:
        Z = Z + _as_float64(bias)
    # absent texts: their columns are removed from the level's matrices (not masked)
    cols = _present_columns(N, text_mask)
    return Z.index_select(1, cols), P.index_select(1, cols)


# --------------------------------------------------------------------------------------------
# the three terms, one level (soft CLIP, point-wise) / all levels (smooth KL)
# --------------------------------------------------------------------------------------------
def ref_soft_clip(image, text, scale, bias=None, labels=None, targets=None, text_mask=None, match="exact"):
    """Soft CLIP loss of one level (paper Eqs. 1-3), float64 0-dim tensor."""
    Z, P = _level_logits_and_mask(image, text, scale, bias, labels, targets, text_mask, match)
    B, N = Z.shape

    # image -> text: one row at a time, softmax over the present texts
    row_losses = []
    for i in range(B):
        row_sum = float(P[i].sum())
        if row_sum <= 0:
            continue  # no positive: the row leaves the mean
        w = P[i] / row_sum
        logq = torch.log_softmax(Z[i], dim=0)
        row_losses.append(-(w * logq).sum())

    # text -> image: one column at a time, softmax over the images
    col_losses = []
    for j in range(N):
        col_sum = float(P[:, j].sum())
        if col_sum <= 0:
            continue
        w = P[:, j] / col_sum
        logq = torch.log_softmax(Z[:, j], dim=0)
        col_losses.append(-(w * logq).sum())

    zero = Z.sum() * 0.0  # keeps the graph even if a direction is empty
    row_mean = torch.stack(row_losses).mean() if row_losses else zero
    col_mean = torch.stack(col_losses).mean() if col_losses else zero
    return (row_mean + col_mean) / 2


def _bce_with_logits(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Element-wise binary cross-entropy with logits, the numerically stable formula."""
    return torch.clamp(z, min=0) - z * y + torch.log1p(torch.exp(-z.abs()))


def ref_pointwise(
    image,
    text,
    scale,
    bias=None,
    labels=None,
    targets=None,
    text_mask=None,
    match="exact",
    normalization="pairs",
    pointwise_target="mask",
):
    """Point-wise (sigmoid / BCE) loss of one level (paper Eq. 4), float64 0-dim tensor."""
    Z, P = _level_logits_and_mask(image, text, scale, bias, labels, targets, text_mask, match)
    B, N = Z.shape
    total = Z.sum() * 0.0
    for i in range(B):
        if pointwise_target == "mask":
            y = P[i]
        elif pointwise_target == "row_normalized":
            row_sum = float(P[i].sum())
            y = P[i] / row_sum if row_sum > 0 else torch.zeros_like(P[i])
        else:
            raise ValueError(f"unknown pointwise_target {pointwise_target!r}")
        total = total + _bce_with_logits(Z[i], y).sum()
    if normalization == "pairs":
        return total / (B * N)
    if normalization == "rows":
        return total / B
    raise ValueError(f"unknown normalization {normalization!r}")


def _level_masks(text_mask, G):
    """None | bool [G, N] | sequence of G (None | bool [N_g]) -> list of G (None | mask)."""
    if text_mask is None:
        return [None] * G
    return [text_mask[g] for g in range(G)]


def ref_smooth_kl(image, texts_list, scale, bias=None, text_mask=None, kl_direction="to_mean"):
    """Smooth KL across levels (paper Eqs. 5-6), float64 0-dim tensor.

    Runs on the columns present in every level; all levels must have the same N.
    """
    G = len(texts_list)
    Ns = {t.shape[0] for t in texts_list}
    if len(Ns) != 1:
        raise ValueError("smooth KL needs the same number of texts in every level")
    N = Ns.pop()
    masks = _level_masks(text_mask, G)
    keep = [True] * N
    for m in masks:
        if m is not None:
            present = m.detach().cpu().tolist()
            keep = [k and bool(p) for k, p in zip(keep, present, strict=True)]
    cols = torch.tensor([j for j in range(N) if keep[j]], dtype=torch.long)

    V = image.to(DTYPE)
    s = _as_float64(scale)
    Zs = []
    for g in range(G):
        Z = s * (V @ texts_list[g].to(DTYPE).t())
        if bias is not None:
            Z = Z + _as_float64(bias)
        Zs.append(Z.index_select(1, cols))  # keep only the columns present in every level

    B = V.shape[0]
    total = V.sum() * 0.0 + Zs[0].sum() * 0.0
    if len(cols) == 0:
        return total
    per_level = [[None] * B for _ in range(G)]
    for i in range(B):
        logps = [torch.log_softmax(Zs[g][i], dim=0) for g in range(G)]
        logm = torch.logsumexp(torch.stack(logps), dim=0) - math.log(G)
        for g in range(G):
            if kl_direction == "to_mean":  # KL(p^g || m)
                kl = (logps[g].exp() * (logps[g] - logm)).sum()
            elif kl_direction == "from_mean":  # KL(m || p^g)
                kl = (logm.exp() * (logm - logps[g])).sum()
            else:
                raise ValueError(f"unknown kl_direction {kl_direction!r}")
            per_level[g][i] = kl
    for g in range(G):
        total = total + torch.stack(per_level[g]).mean()
    return total


# --------------------------------------------------------------------------------------------
# total
# --------------------------------------------------------------------------------------------
def ref_mgll(
    image,
    texts_list,
    scale,
    bias=None,
    labels=None,
    targets=None,
    text_mask=None,
    soft_clip_weight=0.5,
    pointwise_weight=1.0,
    smooth_kl_weight=1.0,
    level_weights=None,
    match="exact",
    normalization="pairs",
    pointwise_target="mask",
    kl_direction="to_mean",
):
    """MGLL total (paper Eq. 7) as a dict of the three weighted terms (float64 0-dim tensors).

    ``texts_list``: a sequence of G [N_g, D] tensors (or a [G, N, D] tensor);
    ``labels`` / ``targets``: None or a sequence of G entries (each None or that level's labels /
    targets); ``text_mask``: None, a bool [G, N] tensor or a sequence of G (None | bool [N_g]).
    The smooth KL term is 0 for G == 1; it needs equal N_g otherwise.
    """
    G = len(texts_list)
    labels = [None] * G if labels is None else list(labels)
    targets = [None] * G if targets is None else list(targets)
    masks = _level_masks(text_mask, G)
    w = [1.0] * G if level_weights is None else [float(x) for x in level_weights]

    clip_terms, point_terms = [], []
    for g in range(G):
        clip_terms.append(
            w[g]
            * ref_soft_clip(
                image, texts_list[g], scale, bias, labels=labels[g], targets=targets[g], text_mask=masks[g], match=match
            )
        )
        point_terms.append(
            w[g]
            * ref_pointwise(
                image,
                texts_list[g],
                scale,
                bias,
                labels=labels[g],
                targets=targets[g],
                text_mask=masks[g],
                match=match,
                normalization=normalization,
                pointwise_target=pointwise_target,
            )
        )
    if G >= 2:
        kl = ref_smooth_kl(image, texts_list, scale, bias, text_mask=text_mask, kl_direction=kl_direction)
    else:
        kl = clip_terms[0] * 0.0
    return {
        "soft_clip_loss": soft_clip_weight * torch.stack(clip_terms).sum(),
        "pointwise_loss": pointwise_weight * torch.stack(point_terms).sum(),
        "smooth_kl_loss": smooth_kl_weight * kl,
    }


def ref_mgll_total(*args, **kwargs) -> torch.Tensor:
    """Sum of the three weighted terms of :func:`ref_mgll`."""
    d = ref_mgll(*args, **kwargs)
    return d["soft_clip_loss"] + d["pointwise_loss"] + d["smooth_kl_loss"]
