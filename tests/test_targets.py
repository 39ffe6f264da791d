"""Positive masks (mgll_loss.targets) on small hand-computed examples.

Covers class ids, multi-hot labels compared by "exact" / "overlap" / "jaccard" (duplicates and empty
label sets included: two empty sets count as identical in every mode), explicit targets with a
text mask, tiles of ``LevelTargets`` against the full mask, label strings -> labels, and an
end-to-end check that labels from strings give the same loss as the equivalent explicit targets.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgll_loss import functional as MF
from mgll_loss.labels import label_id
from mgll_loss.targets import (
    LabelSets,
    LevelTargets,
    labels_from_strings,
    level_labels_from_strings,
    level_targets,
    mask_from_class_ids,
    mask_from_multi_hot,
    positive_mask,
)

from .helpers import literal_regex, unit_features


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# -------------------------------------------------------------------------------------------------
# the hand-computed example: 7 label sets over C=3 classes
#   r0 {0,1}  r1 {0}  r2 {2}  r3 {0,1} (duplicate of r0)  r4 {}  r5 {} (two empty sets)  r6 {1,2}
# -------------------------------------------------------------------------------------------------
MULTI_HOT = torch.tensor(
    [
        [1, 1, 0],
        [1, 0, 0],
        [0, 0, 1],
        [1, 1, 0],
        [0, 0, 0],
        [0, 0, 0],
        [0, 1, 1],
    ]
)
EXPECTED = {
    "exact": _t(
        [
            [1, 0, 0, 1, 0, 0, 0],
            [0, 1, 0, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0, 0],
            [1, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],
        ]
    ),
    "overlap": _t(
        [
            [1, 1, 0, 1, 0, 0, 1],
            [1, 1, 0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0, 1],
            [1, 1, 0, 1, 0, 0, 1],
            [0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 0],
            [1, 0, 1, 1, 0, 0, 1],
        ]
    ),
    "jaccard": _t(
        [
            [1, 1 / 2, 0, 1, 0, 0, 1 / 3],
            [1 / 2, 1, 0, 1 / 2, 0, 0, 0],
            [0, 0, 1, 0, 0, 0, 1 / 2],
            [1, 1 / 2, 0, 1, 0, 0, 1 / 3],
            [0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 0],
            [1 / 3, 0, 1 / 2, 1 / 3, 0, 0, 1],
        ]
    ),
}
MATCHES = tuple(EXPECTED)
CLASS_IDS = torch.tensor([0, 1, 0, 2, 1, 0, 3])
CLASS_IDS_MASK = _t(
    [
        [1, 0, 1, 0, 0, 1, 0],
        [0, 1, 0, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [0, 0, 0, 1, 0, 0, 0],
        [0, 1, 0, 0, 1, 0, 0],
        [1, 0, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],
    ]
)
DENSE = _t(  # B=7 images against N=5 texts
    [
        [1, 0, 0, 0, 0],
        [0, 0.5, 0, 0.5, 0],
        [0, 0, 0, 0, 0],
        [0.25, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
        [1, 1, 0, 0, 0],
        [0, 0, 0.75, 0, 0],
    ]
)


# =================================================================================================
# mask_from_class_ids
# =================================================================================================
def test_mask_from_class_ids_duplicates():
    mask = mask_from_class_ids(CLASS_IDS)
    assert mask.dtype == torch.float32 and mask.shape == (7, 7)
    torch.testing.assert_close(mask, CLASS_IDS_MASK)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.uint8])
def test_mask_from_class_ids_integer_dtypes(dtype):
    torch.testing.assert_close(mask_from_class_ids(CLASS_IDS.to(dtype)), CLASS_IDS_MASK)


def test_mask_from_class_ids_unique_is_identity_and_constant_is_ones():
    torch.testing.assert_close(mask_from_class_ids(torch.tensor([3, 1, 4, 0])), torch.eye(4))
    torch.testing.assert_close(mask_from_class_ids(torch.full((5,), 7)), torch.ones(5, 5))
    torch.testing.assert_close(mask_from_class_ids(torch.tensor([9])), torch.ones(1, 1))


def test_mask_from_class_ids_float():
    with pytest.raises(TypeError, match=literal_regex("class ids", "integer", "float32")):
        mask_from_class_ids(torch.tensor([0.0, 1.0, 0.0]))


def test_mask_from_class_ids_not_a_tensor():
    with pytest.raises(TypeError, match=literal_regex("class_ids", "list")):
        mask_from_class_ids([0, 1, 0])


@pytest.mark.parametrize("value", [torch.tensor(3), torch.tensor([[1, 0], [0, 1]])], ids=["0-dim", "rank2"])
def test_mask_from_class_ids_wrong_rank(value):
    with pytest.raises(ValueError, match=literal_regex("class_ids", "[B]", str(list(value.shape)))):
        mask_from_class_ids(value)


# =================================================================================================
# mask_from_multi_hot
# =================================================================================================
@pytest.mark.parametrize("match", MATCHES)
def test_mask_from_multi_hot_hand_computed(match):
    mask = mask_from_multi_hot(MULTI_HOT, match=match)
    assert mask.dtype == torch.float32 and mask.shape == (7, 7)
    torch.testing.assert_close(mask, EXPECTED[match])


@pytest.mark.parametrize("match", MATCHES)
@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float16, torch.float32, torch.float64])
def test_mask_from_multi_hot_any_dtype(match, dtype):
    torch.testing.assert_close(mask_from_multi_hot(MULTI_HOT.to(dtype), match=match), EXPECTED[match])


def test_mask_from_multi_hot_default_is_exact():
    torch.testing.assert_close(mask_from_multi_hot(MULTI_HOT), EXPECTED["exact"])


@pytest.mark.parametrize("match", MATCHES)
def test_mask_from_multi_hot_empty_sets_are_identical(match):
    # every row empty: all images share the (empty) label set, the diagonal is positive
    torch.testing.assert_close(mask_from_multi_hot(torch.zeros(3, 4), match=match), torch.ones(3, 3))


def test_mask_from_multi_hot_without_classes_is_rejected():
    # C=0 would make every pair a positive without any label saying so
    with pytest.raises(ValueError, match=literal_regex("multi_hot", "C >= 1", "[2, 0]")):
        mask_from_multi_hot(torch.zeros(2, 0))


@pytest.mark.parametrize("match", MATCHES)
def test_mask_from_multi_hot_diagonal_always_positive_and_symmetric(match):
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(20, 5, generator=gen) < 0.3).long()
    mask = mask_from_multi_hot(labels, match=match)
    torch.testing.assert_close(mask.diagonal(), torch.ones(20))
    torch.testing.assert_close(mask, mask.t())
    assert bool(((mask >= 0) & (mask <= 1)).all())


def test_mask_from_multi_hot_one_hot_equals_class_ids():
    one_hot = F.one_hot(CLASS_IDS, 4)
    for match in MATCHES:
        torch.testing.assert_close(mask_from_multi_hot(one_hot, match=match), CLASS_IDS_MASK)


def test_mask_from_multi_hot_wrong_rank():
    with pytest.raises(ValueError, match=literal_regex("multi_hot", "[B, C]", "[4]")):
        mask_from_multi_hot(torch.tensor([1, 0, 1, 1]))


def test_mask_from_multi_hot_not_a_tensor():
    with pytest.raises(TypeError, match=literal_regex("multi_hot", "list")):
        mask_from_multi_hot([[1, 0], [0, 1]])


def test_mask_from_multi_hot_value_two():
    with pytest.raises(ValueError, match="0 and 1"):
        mask_from_multi_hot(torch.tensor([[1, 0], [0, 2]]))


def test_mask_from_multi_hot_unknown_match():
    with pytest.raises(ValueError, match=literal_regex("match", "'exact', 'overlap', 'jaccard'", "'cosine'")):
        mask_from_multi_hot(MULTI_HOT, match="cosine")


# =================================================================================================
# positive_mask
# =================================================================================================
def test_positive_mask_identity():
    torch.testing.assert_close(positive_mask(num_images=4), torch.eye(4))
    torch.testing.assert_close(positive_mask(num_images=4, num_texts=4), torch.eye(4))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(labels=CLASS_IDS), CLASS_IDS_MASK),
        (dict(labels=MULTI_HOT), EXPECTED["exact"]),
        (dict(targets=DENSE), DENSE),
        (dict(text_mask=torch.tensor([True, False, True])), torch.diag(torch.tensor([1.0, 0.0, 1.0]))),
    ],
    ids=["class-ids", "multi-hot", "targets", "text-mask"],
)
def test_positive_mask_infers_its_sizes_from_the_inputs(kwargs, expected):
    torch.testing.assert_close(positive_mask(**kwargs), expected)


def test_positive_mask_infers_sizes_from_label_sets():
    label_sets = LabelSets(torch.tensor([[0, 1], [1, -1], [0, 1]]))
    torch.testing.assert_close(positive_mask(label_sets), positive_mask(label_sets, num_images=3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), ("num_images: expected an int when no labels, targets or text_mask", "got None")),
        (dict(labels=torch.tensor(3)), ("num_images: cannot be read from labels of shape []", "pass num_images=B")),
        (dict(labels=CLASS_IDS, num_images=6), ("labels", "B=6", "[7]")),
        (dict(targets=DENSE, num_texts=4), ("targets", "[7, 4]", "[7, 5]")),
        (dict(num_images=3, num_texts=4), ("num_texts: without labels or targets", "num_texts=4", "num_images=3")),
        (dict(num_images=-2), ("num_images: expected a positive int or None, got -2",)),
        (dict(num_images=2.0), ("num_images: expected a positive int or None, got 2.0",)),
        (dict(labels=CLASS_IDS, num_texts=True), ("num_texts: expected a positive int or None, got True",)),
    ],
    ids=[
        "nothing",
        "0-dim-labels",
        "num-images-disagrees",
        "num-texts-disagrees",
        "identity-not-square",
        "negative",
        "float",
        "bool",
    ],
)
def test_positive_mask_sizes_that_inputs_do_not_give_or_contradict(kwargs, message):
    with pytest.raises(ValueError, match=literal_regex(*message)):
        positive_mask(**kwargs)


@pytest.mark.parametrize("num_images", [None, 3])
def test_positive_mask_non_tensor_labels_are_a_type_error(num_images):
    with pytest.raises(TypeError, match=literal_regex("labels", "expected a tensor", "list")):
        positive_mask([0, 1, 0], num_images=num_images)
    with pytest.raises(TypeError, match=literal_regex("targets", "expected a tensor", "list")):
        positive_mask(targets=[[1.0]], num_images=num_images)


def test_positive_mask_identity_needs_square():
    with pytest.raises(ValueError, match=literal_regex("num_texts == num_images", "num_texts=5", "num_images=4")):
        positive_mask(num_images=4, num_texts=5)


@pytest.mark.parametrize("match", MATCHES)
def test_positive_mask_multi_hot_uses_match(match):
    torch.testing.assert_close(positive_mask(MULTI_HOT, num_images=7, match=match), EXPECTED[match])


def test_positive_mask_explicit_targets():
    out = positive_mask(targets=DENSE, num_images=7, num_texts=5)
    assert out.dtype == torch.float32 and out.shape == (7, 5)
    torch.testing.assert_close(out, DENSE)


def test_positive_mask_bool_and_float64_targets():
    torch.testing.assert_close(positive_mask(targets=DENSE > 0, num_images=7, num_texts=5), (DENSE > 0).float())
    out = positive_mask(targets=DENSE.double(), num_images=7, num_texts=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, DENSE)


def test_positive_mask_targets_with_text_mask():
    text_mask = torch.tensor([True, False, True, True, False])
    expected = DENSE.clone()
    expected[:, [1, 4]] = 0
    out = positive_mask(targets=DENSE, num_images=7, num_texts=5, text_mask=text_mask)
    torch.testing.assert_close(out, expected)


def test_positive_mask_labels_with_text_mask():
    text_mask = torch.tensor([True, True, False, True, True, True, False])
    expected = CLASS_IDS_MASK * text_mask.float()
    out = positive_mask(CLASS_IDS, num_images=7, text_mask=text_mask)
    torch.testing.assert_close(out, expected)
    # identity with a mask: absent texts lose their (only) positive
    torch.testing.assert_close(positive_mask(num_images=7, text_mask=text_mask), torch.diag(text_mask.float()))


def test_positive_mask_labels_and_targets():
    with pytest.raises(ValueError, match="not both"):
        positive_mask(CLASS_IDS, DENSE, num_images=7, num_texts=5)


def test_positive_mask_targets_wrong_shape():
    with pytest.raises(ValueError, match=literal_regex("targets", "[7, 6]", "[7, 5]")):
        positive_mask(targets=DENSE, num_images=7, num_texts=6)


def test_positive_mask_labels_need_square():
    with pytest.raises(ValueError, match=literal_regex("N == B", "N=5", "B=7")):
        positive_mask(CLASS_IDS, num_images=7, num_texts=5)


def test_positive_mask_text_mask_wrong_length():
    with pytest.raises(ValueError, match=literal_regex("text_mask", "[4]")):
        positive_mask(targets=DENSE, num_images=7, num_texts=5, text_mask=torch.ones(4, dtype=torch.bool))


def test_positive_mask_text_mask_float():
    with pytest.raises(TypeError, match=literal_regex("text_mask", "float32")):
        positive_mask(targets=DENSE, num_images=7, num_texts=5, text_mask=torch.full((5,), 0.5))


# =================================================================================================
# LevelTargets tiles
# =================================================================================================
def _level(kind):
    """(LevelTargets, expected full mask) for every kind of positives."""
    if kind == "identity":
        return LevelTargets(7, 7), torch.eye(7)
    if kind == "class_ids":
        return LevelTargets(7, 7, class_ids=CLASS_IDS), CLASS_IDS_MASK
    if kind.startswith("multi_hot_"):
        match = kind.split("_")[-1]
        return LevelTargets(7, 7, multi_hot=MULTI_HOT.bool(), match=match), EXPECTED[match]
    if kind == "dense":
        return LevelTargets(7, 5, dense=DENSE), DENSE
    raise KeyError(kind)


KINDS = ["identity", "class_ids", "multi_hot_exact", "multi_hot_overlap", "multi_hot_jaccard", "dense"]
TILES = [(0, 7, 0, 7), (0, 3, 2, 7), (3, 7, 0, 2), (1, 4, 1, 4), (5, 6, 0, 7), (6, 7, 6, 7), (2, 5, 4, 5), (0, 1, 0, 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_level_targets_full(kind):
    level, expected = _level(kind)
    assert level.is_identity == (kind == "identity")
    full = level.full(torch.float32, torch.device("cpu"))
    assert full.dtype == torch.float32
    torch.testing.assert_close(full, expected)
    assert level.full(torch.float64, torch.device("cpu")).dtype == torch.float64


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_level_targets_tile_equals_slice_of_full(kind, dtype):
    level, _ = _level(kind)
    cpu = torch.device("cpu")
    full = level.full(dtype, cpu)
    for r0, r1, c0, c1 in TILES:
        c1 = min(c1, level.num_texts)
        c0 = min(c0, c1 - 1)
        tile = level.tile(slice(r0, r1), slice(c0, c1), dtype, cpu)
        assert tile.dtype == dtype and tile.shape == (r1 - r0, c1 - c0)
        torch.testing.assert_close(tile, full[r0:r1, c0:c1], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_level_targets_tiles_cover_full(kind):
    # an odd tiling (3 x 2) reassembles the full mask
    level, expected = _level(kind)
    cpu = torch.device("cpu")
    rows = [slice(0, 3), slice(3, 6), slice(6, 7)]
    cols = [slice(0, 2), slice(2, level.num_texts)]
    out = torch.cat([torch.cat([level.tile(r, c, torch.float32, cpu) for c in cols], 1) for r in rows], 0)
    torch.testing.assert_close(out, expected)


def test_level_targets_from_labels_and_targets():
    assert level_targets(None, None, num_images=3, num_texts=3).is_identity
    by_ids = level_targets(CLASS_IDS, None, num_images=7, num_texts=7)
    torch.testing.assert_close(by_ids.full(torch.float32, torch.device("cpu")), CLASS_IDS_MASK)
    by_dense = level_targets(None, DENSE, num_images=7, num_texts=5)
    torch.testing.assert_close(by_dense.full(torch.float32, torch.device("cpu")), DENSE)
    with pytest.raises(ValueError, match=literal_regex("labels[2]", "not both")):
        level_targets(CLASS_IDS, CLASS_IDS_MASK, num_images=7, num_texts=7, name="labels[2]")
    with pytest.raises(ValueError, match=literal_regex("targets[2]", "[7, 7]", "[7, 5]")):
        level_targets(None, DENSE, num_images=7, num_texts=7, name="labels[2]")


# =================================================================================================
# labels_from_strings
# =================================================================================================
def _first_appearance(ids):
    """Class ids renumbered in order of first appearance (which strings share a class)."""
    order = {}
    return [order.setdefault(i, len(order)) for i in ids.tolist()]


def _multi_hot(label_sets, names):
    """LabelSets as a bool multi-hot tensor over ``names`` (columns in that order)."""
    assert isinstance(label_sets, LabelSets)
    rows = [set(row) for row in label_sets.tolist()]
    assert all(i == -1 or i in {label_id(n) for n in names} for row in rows for i in row)
    return torch.tensor([[label_id(n) in row for n in names] for row in rows], dtype=torch.bool).reshape(len(rows), -1)


def test_labels_from_strings_same_string_same_id():
    ids = labels_from_strings(["Normal", "Abnormal", "Normal", "DR", "Abnormal"])
    assert ids.dtype == torch.int64
    assert _first_appearance(ids) == [0, 1, 0, 2, 1]
    assert ids.tolist() == [label_id(t) for t in ["Normal", "Abnormal", "Normal", "DR", "Abnormal"]]


def test_labels_from_strings_docstring_examples():
    assert _first_appearance(labels_from_strings(["Normal", "Abnormal", "Normal"])) == [0, 1, 0]
    label_sets = labels_from_strings(["Abnormal, DR", "Normal", "Abnormal, AMD"], separator=",")
    expected = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    assert label_sets.dtype == torch.int64 and label_sets.shape == (3, 2)
    assert torch.equal(_multi_hot(label_sets, ["Abnormal", "DR", "Normal", "AMD"]), expected)


def test_labels_from_strings_with_vocabulary():
    vocabulary = ["Normal", "Glaucoma", "Abnormal", "Unused"]
    ids = labels_from_strings(["Abnormal", "Normal", "Abnormal", "Glaucoma"], vocabulary=vocabulary)
    assert ids.tolist() == [2, 0, 2, 1]


def test_labels_from_strings_unknown_label_with_vocabulary():
    with pytest.raises(ValueError, match=literal_regex("texts[2]", "'Cataract'", "vocabulary")):
        labels_from_strings(["Normal", "Abnormal", "Cataract"], vocabulary=["Normal", "Abnormal"])


def test_labels_from_strings_separator_strips_and_drops_empty_parts():
    texts = [
        "Abnormal, Mild Non-Proliferative Diabetic Retinopathy",
        "Normal, Healthy",
        "  Abnormal ,, Glaucoma ,",
        "Normal",
        " , ,",  # no label at all -> an empty label set
        "Healthy,Normal",  # same set as row 1, other order
    ]
    label_sets = labels_from_strings(texts, separator=",")
    names = ["Abnormal", "Mild Non-Proliferative Diabetic Retinopathy", "Normal", "Healthy", "Glaucoma"]
    multi_hot = _multi_hot(label_sets, names)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [0, 0, 1, 1, 0],
            [1, 0, 0, 0, 1],
            [0, 0, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(multi_hot, expected)
    exact = positive_mask(label_sets, num_images=6)
    assert torch.equal(exact, mask_from_multi_hot(multi_hot))
    assert exact[1, 5] == 1 and exact[1, 3] == 0 and exact[4, 4] == 1
    overlap = positive_mask(label_sets, num_images=6, match="overlap")
    assert torch.equal(overlap, mask_from_multi_hot(multi_hot, match="overlap"))
    assert overlap[0, 2] == 1 and overlap[1, 3] == 1 and overlap[0, 1] == 0 and overlap[4, 0] == 0


def test_labels_from_strings_duplicate_part_in_one_string():
    label_sets = labels_from_strings(["a|a|b", "b"], separator="|")
    assert torch.equal(_multi_hot(label_sets, ["a", "b"]), torch.tensor([[1, 1], [0, 1]]).bool())


def test_labels_from_strings_separator_with_vocabulary():
    vocabulary = ["Normal", "Abnormal", "DR", "AMD"]
    multi_hot = labels_from_strings(["Abnormal; DR", "Normal", "AMD ;Abnormal"], separator=";", vocabulary=vocabulary)
    expected = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(multi_hot, expected)
    with pytest.raises(ValueError, match=literal_regex("texts[1]", "'Cataract'")):
        labels_from_strings(["DR", "Normal; Cataract"], separator=";", vocabulary=vocabulary)


def test_labels_from_strings_multi_character_separator():
    label_sets = labels_from_strings(["x and y", "y"], separator=" and ")
    assert torch.equal(_multi_hot(label_sets, ["x", "y"]), torch.tensor([[1, 1], [0, 1]], dtype=torch.bool))


@pytest.mark.parametrize("texts", ["Normal", 3, None], ids=["str", "int", "None"])
def test_labels_from_strings_texts_not_a_sequence_of_strings(texts):
    with pytest.raises(TypeError, match=literal_regex("texts", type(texts).__name__)):
        labels_from_strings(texts)


def test_labels_from_strings_non_string_entry():
    with pytest.raises(TypeError, match=literal_regex("texts[1]", "string", "int")):
        labels_from_strings(["Normal", 1])


def test_labels_from_strings_empty_separator():
    with pytest.raises(ValueError, match=literal_regex("separator", "non-empty", "''")):
        labels_from_strings(["a,b"], separator="")


def test_labels_from_strings_separator_not_a_string():
    with pytest.raises(TypeError, match=literal_regex("separator", "5")):
        labels_from_strings(["a,b"], separator=5)


def test_labels_from_strings_vocabulary_not_a_sequence():
    with pytest.raises(TypeError, match="vocabulary"):
        labels_from_strings(["a"], vocabulary=5)


# =================================================================================================
# level_labels_from_strings
# =================================================================================================
def test_level_labels_from_strings_per_level_separators():
    levels = [
        ["Normal", "Abnormal", "Abnormal"],
        ["Healthy", "Abnormal, DR", "Abnormal, AMD"],
        ["a", "b", "a"],
    ]
    ids, label_sets, other = level_labels_from_strings(levels, separator=[None, ",", None])
    assert _first_appearance(ids) == [0, 1, 1]
    expected = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(_multi_hot(label_sets, ["Healthy", "Abnormal", "DR", "AMD"]), expected)
    assert _first_appearance(other) == [0, 1, 0]


def test_level_labels_from_strings_docstring_example():
    ids, categories = level_labels_from_strings(
        [["Normal", "Abnormal"], ["Healthy", "Abnormal, DR"]], separator=[None, ","]
    )
    assert _first_appearance(ids) == [0, 1]
    expected = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    assert torch.equal(_multi_hot(categories, ["Healthy", "Abnormal", "DR"]), expected)


def test_level_labels_from_strings_one_separator_for_all_levels():
    levels = [["a, b", "b"], ["c", "c , d"]]
    first, second = level_labels_from_strings(levels, separator=",")
    assert torch.equal(_multi_hot(first, ["a", "b"]), torch.tensor([[1, 1], [0, 1]], dtype=torch.bool))
    assert torch.equal(_multi_hot(second, ["c", "d"]), torch.tensor([[1, 0], [1, 1]], dtype=torch.bool))
    first, second = level_labels_from_strings(levels)
    assert _first_appearance(first) == [0, 1] and _first_appearance(second) == [0, 1]


def test_level_labels_from_strings_matches_labels_from_strings():
    levels = [["x", "y", "x"], ["p;q", "q", ""]]
    out = level_labels_from_strings(levels, separator=(None, ";"))
    assert torch.equal(out[0], labels_from_strings(levels[0]))
    assert torch.equal(out[1], labels_from_strings(levels[1], separator=";"))


def test_level_labels_from_strings_mismatched_batch_sizes():
    with pytest.raises(ValueError, match=literal_regex("levels", "batch size", "[3, 2]")):
        level_labels_from_strings([["a", "b", "c"], ["a", "b"]])


def test_level_labels_from_strings_separator_list_wrong_length():
    with pytest.raises(ValueError, match=literal_regex("separator", "G=2", "got 3")):
        level_labels_from_strings([["a"], ["b"]], separator=[None, ",", ","])


@pytest.mark.parametrize("levels", ["abc", 3, None], ids=["str", "int", "None"])
def test_level_labels_from_strings_levels_not_a_sequence(levels):
    with pytest.raises(TypeError, match=literal_regex("levels", type(levels).__name__)):
        level_labels_from_strings(levels)


def test_level_labels_from_strings_level_is_a_string():
    with pytest.raises(TypeError, match=literal_regex("levels[0]", "str")):
        level_labels_from_strings(["ab", "cd"])


def test_level_labels_from_strings_non_string_entry():
    with pytest.raises(TypeError, match=literal_regex("texts[0]", "string", "int")):
        level_labels_from_strings([["a", "b"], [1, 2]])


def test_level_labels_from_strings_level_not_a_sequence():
    with pytest.raises(TypeError, match="levels"):
        level_labels_from_strings([5, 6])


def test_level_labels_from_strings_separator_not_a_string():
    with pytest.raises(TypeError, match="separator"):
        level_labels_from_strings([["a"], ["b"]], separator=5)


# =================================================================================================
# end to end: labels from strings == the same loss with the equivalent explicit targets
# =================================================================================================
def _features(b, n, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return unit_features(b, d, dtype=torch.float64, generator=gen), unit_features(
        n, d, dtype=torch.float64, generator=gen
    )


FUNDUS = [
    "Abnormal, Mild Non-Proliferative Diabetic Retinopathy",
    "Normal, Healthy",
    "Abnormal, Glaucoma",
    "Normal, Healthy",
    "Abnormal , Mild Non-Proliferative Diabetic Retinopathy, Glaucoma",
    "Abnormal,Glaucoma",
]


def test_end_to_end_class_ids_from_strings():
    texts = ["Normal", "Abnormal", "Normal", "Glaucoma", "Abnormal", "Normal"]
    labels = labels_from_strings(texts)
    images, text_features = _features(len(texts), len(texts))
    targets = positive_mask(labels, num_images=len(texts))
    from_labels = MF.soft_clip_loss(images, text_features, 14.3, labels=labels)
    from_targets = MF.soft_clip_loss(images, text_features, 14.3, targets=targets)
    torch.testing.assert_close(from_labels, from_targets, rtol=1e-12, atol=1e-12)
    # and the positives really are the hand-expected ones
    expected = _t([[1 if a == b else 0 for b in texts] for a in texts])
    torch.testing.assert_close(targets, expected)


@pytest.mark.parametrize("match", MATCHES)
def test_end_to_end_multi_hot_from_strings(match):
    labels = labels_from_strings(FUNDUS, separator=",")
    assert labels.shape == (6, 3)  # LabelSets: up to 3 labels per image
    images, text_features = _features(6, 6, seed=1)
    targets = positive_mask(labels, num_images=6, match=match)
    # positive_mask returns float32: jaccard weights such as 1/3 are rounded there, while the loss
    # builds them in the float64 compute dtype; 0/1 masks are exact
    tol = dict(rtol=1e-7, atol=0) if match == "jaccard" else dict(rtol=1e-12, atol=1e-12)
    from_labels = MF.soft_clip_loss(images, text_features, 14.3, -1.0, labels=labels, match=match)
    from_targets = MF.soft_clip_loss(images, text_features, 14.3, -1.0, targets=targets)
    torch.testing.assert_close(from_labels, from_targets, **tol)
    pw_labels = MF.pointwise_loss(images, text_features, 14.3, -1.0, labels=labels, match=match)
    pw_targets = MF.pointwise_loss(images, text_features, 14.3, -1.0, targets=targets)
    torch.testing.assert_close(pw_labels, pw_targets, **tol)


def test_end_to_end_levels_from_strings_mgll():
    levels = [
        ["Normal", "Abnormal", "Abnormal", "Normal", "Abnormal", "Abnormal"],
        FUNDUS,
    ]
    labels = level_labels_from_strings(levels, separator=[None, ","])
    images, _ = _features(6, 6, seed=2)
    text_features = unit_features(3, 6, 16, dtype=torch.float64, seed=3)
    targets = [positive_mask(labels[0], num_images=6), positive_mask(labels[1], num_images=6, match="overlap"), None]
    from_labels = MF.mgll_loss(images, text_features, 10.0, labels=[*labels, None], match="overlap", output_dict=True)
    from_targets = MF.mgll_loss(images, text_features, 10.0, targets=targets, match="overlap", output_dict=True)
    for key in from_labels:
        torch.testing.assert_close(from_labels[key], from_targets[key], rtol=1e-12, atol=1e-12)
