"""Labels as people write them: normalisation, stable ids, label sets, unlabelled ids, and the messages users get.

The distributed proof (every rank labelling its own strings) is in tests/test_distributed_strings.py.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from mgll_loss import MGLLLoss, SmoothKLLoss, SoftCLIPLoss
from mgll_loss.labels import label_id, normalize_label
from mgll_loss.targets import LabelSets, labels_from_strings, level_labels_from_strings, positive_mask

from .helpers import skip_without_triton, unit_features
from .reference import ref_mgll_total

BACKENDS = [dict(backend="dense"), dict(backend="chunked", chunk_size=3), dict(backend="triton")]
SETS = ["DR, AMD", "AMD,DR", "Drusen", "", "Haemorrhages, DR", "AMD", "drusen , amd", "DR,DR"]
VOCABULARY = ["DR", "AMD", "Drusen", "Haemorrhages"]


def test_whitespace_never_makes_a_new_class_and_case_is_an_option():
    ids = labels_from_strings(
        ["Normal, Healthy", "Normal, Healthy ", "normal, healthy", " Normal,\tHealthy", "Normal,  Healthy"]
    )
    assert ids.dtype == torch.int64 and bool((ids >= 0).all())
    assert ids.tolist() == [ids[0].item()] * 2 + [ids[2].item()] + [ids[0].item()] * 2 and ids[0] != ids[2]
    folded = labels_from_strings(
        ["Normal, Healthy", "Normal, Healthy ", "normal, healthy", "NORMAL,  HEALTHY"], case_sensitive=False
    )
    assert len(set(folded.tolist())) == 1
    assert normalize_label("Cafe\u0301") == normalize_label("Caf\u00e9")  # NFC: composed and decomposed accents
    assert normalize_label(" a\n b ") == "a b" and normalize_label("D.R.") != normalize_label("DR")


def test_the_same_string_gets_the_same_id_in_every_call_and_batch():
    first = labels_from_strings(["Normal", "DR", "AMD"])
    second = labels_from_strings(["AMD", "Glaucoma", "Normal", "Normal"])
    assert first[0] == second[2] == second[3] and first[2] == second[0] and first[1] != second[1]
    assert first.tolist() == [label_id(t) for t in ("Normal", "DR", "AMD")]
    # the documented hash, and a fixed value: ids must never change between versions
    assert label_id("Normal") == int.from_bytes(hashlib.blake2b(b"Normal", digest_size=8).digest(), "big") >> 1
    assert label_id("Normal") == 7564491758576314919


def test_label_sets_do_not_depend_on_order_duplicates_or_other_rows():
    sets = labels_from_strings(SETS, separator=",")
    assert isinstance(sets, LabelSets) and sets.dtype == torch.int64 and tuple(sets.shape) == (8, 2)
    assert torch.equal(sets[0], sets[1]) and torch.equal(sets[3], torch.tensor([-1, -1]))
    assert sets[7].tolist() == [label_id("DR"), -1]  # "DR,DR" is the set {DR}
    alone = labels_from_strings(SETS[4:5], separator=",")
    assert alone.shape == (1, 2) and sorted(alone[0].tolist()) == sorted(sets[4].tolist())
    assert labels_from_strings(["", " "], separator=",").shape == (2, 0)
    with pytest.raises(ValueError, match=r"ids: expected an int64 tensor \[B, K\]"):
        LabelSets(torch.zeros(3, dtype=torch.int64))


def test_vocabulary_still_numbers_labels_by_position_after_normalising():
    assert labels_from_strings(["AMD ", "DR"], vocabulary=VOCABULARY).tolist() == [1, 0]
    multi_hot = labels_from_strings(["DR, AMD", "drusen"], separator=",", vocabulary=VOCABULARY, case_sensitive=False)
    assert multi_hot.tolist() == [[True, True, False, False], [False, False, True, False]]
    with pytest.raises(ValueError, match=r"texts\[1\]: label 'Myopia' is not in the vocabulary"):
        labels_from_strings(["DR", "Myopia"], vocabulary=VOCABULARY)
    with pytest.raises(ValueError, match=r"vocabulary\[1\]: 'dr ' normalises to 'dr', already vocabulary\[0\]"):
        labels_from_strings(["DR"], vocabulary=["DR", "dr "], case_sensitive=False)


@pytest.mark.parametrize("options", BACKENDS, ids=lambda o: o["backend"])
@pytest.mark.parametrize("match", ["exact", "overlap", "jaccard"])
def test_label_sets_equal_multi_hot_over_a_vocabulary_and_the_reference(options, match):
    batch = len(SETS)
    multi_hot = labels_from_strings(SETS, separator=",", vocabulary=VOCABULARY, case_sensitive=False)
    sets = labels_from_strings(SETS, separator=",", case_sensitive=False)
    results = []
    for labels in (sets, multi_hot):
        images = unit_features(batch, 6, dtype=torch.float64, seed=1, requires_grad=True)
        texts = unit_features(2, batch, 6, dtype=torch.float64, seed=2, requires_grad=True)
        loss = MGLLLoss(match=match, **options)(images, texts, 10.0, -2.0, labels=[labels, None])
        loss.backward()
        results.append((loss.detach(), images.grad, texts.grad))
    expected = ref_mgll_total(
        unit_features(batch, 6, dtype=torch.float64, seed=1),
        list(unit_features(2, batch, 6, dtype=torch.float64, seed=2)),
        10.0,
        -2.0,
        labels=[multi_hot.long(), None],
        match=match,
    )
    torch.testing.assert_close(results[0][0], expected, rtol=1e-9, atol=1e-9)
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _unlabelled_reference_mask(ids: torch.Tensor) -> torch.Tensor:
    """P_ij = [y_i == y_j >= 0] or [i == j], built pair by pair."""
    n = len(ids)
    return torch.tensor(
        [[float(i == j or (ids[i] == ids[j] and ids[i] >= 0)) for j in range(n)] for i in range(n)], dtype=torch.float64
    )


@pytest.mark.parametrize("options", BACKENDS, ids=lambda o: o["backend"])
def test_negative_class_ids_mean_unlabelled_at_that_level(options):
    if options["backend"] == "triton":
        skip_without_triton()
    ids = torch.tensor([2, -1, 2, -1, 7, -100, 7])
    mask = _unlabelled_reference_mask(ids)
    torch.testing.assert_close(positive_mask(ids, num_images=7).double(), mask)
    text_mask = torch.tensor([True, True, False, True, True, True, True])
    grads = []
    for labels, targets in (([ids, None], None), (None, [mask, None])):
        images = unit_features(7, 5, dtype=torch.float64, seed=3, requires_grad=True)
        texts = unit_features(2, 7, 5, dtype=torch.float64, seed=4, requires_grad=True)
        loss = MGLLLoss(**options)(images, texts, 10.0, labels=labels, targets=targets, text_mask=[text_mask, None])
        loss.backward()
        grads.append((loss.detach(), images.grad, texts.grad))
    expected = ref_mgll_total(
        unit_features(7, 5, dtype=torch.float64, seed=3),
        list(unit_features(2, 7, 5, dtype=torch.float64, seed=4)),
        10.0,
        targets=[mask, None],
        text_mask=[text_mask, None],
    )
    torch.testing.assert_close(grads[0][0], expected, rtol=1e-9, atol=1e-9)
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "loss, labels, name",
    [
        (SoftCLIPLoss(), ["Normal", "Abnormal", "Normal", "DR"], "labels"),
        (MGLLLoss(), [["Normal", "Abnormal", "Normal", "DR"], None], "labels[0]"),
        (MGLLLoss(), [None, "Normal"], "labels[1]"),
    ],
)
def test_label_strings_passed_to_a_loss_say_how_to_build_labels(loss, labels, name):
    images = unit_features(4, 6)
    texts = unit_features(4, 6) if isinstance(loss, SoftCLIPLoss) else unit_features(2, 4, 6)
    with pytest.raises(
        TypeError,
        match=rf"^{name.replace('[', '.').replace(']', '.')}: got label strings .*"
        r"level_labels_from_strings",
    ):
        loss(images, texts, 10.0, labels=labels)


def test_batch_first_text_features_are_named_as_such():
    images, texts = unit_features(4, 6), unit_features(3, 4, 6)  # [G, B, D]
    labels = level_labels_from_strings([["a", "b", "a", "c"]] * 3)
    with pytest.raises(
        ValueError,
        match=r"text_features: got shape \[4, 3, 6\], which looks batch-first \[B, G, D\] "
        r"with B=4 images and G=3 levels.*transpose\(0, 1\)",
    ):
        MGLLLoss()(images, texts.transpose(0, 1), 10.0, labels=labels)
    with pytest.raises(ValueError, match="looks batch-first"):
        MGLLLoss()(images, texts.transpose(0, 1), 10.0)
    # [G, N, D] with G == B is fine where every level has explicit targets, or for the smooth KL alone
    vocabulary = unit_features(4, 5, 6)
    targets = [torch.eye(4, 5)] * 4
    assert MGLLLoss(smooth_kl_weight=0.0)(images, vocabulary, 10.0, targets=targets).isfinite()
    assert SmoothKLLoss()(images, vocabulary, 10.0).isfinite()
