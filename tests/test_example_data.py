"""The example engine's data layer (``examples/mgll_examples/data``): the MGLL-Fundus, MGLL-Xray and
generic-table loaders on hand-written records, every bad-input error, image reading and batching,
and the synthetic data sets (round trip, determinism, and images that show their labels).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mgll_examples.data import (
    ImageTextDataset,
    check_image_files,
    collate,
    ensure_synthetic,
    load_fundus,
    load_json_lists,
    load_table,
    load_xray,
    read_image,
    write_synthetic_fundus,
    write_synthetic_xray,
)
from mgll_examples.data import images as images_module
from mgll_examples.data import synthetic as synthetic_module
from mgll_examples.data.drawing import Grid, discs, polylines
from mgll_examples.data.records import Sample
from mgll_examples.errors import ExampleError

from .example_layouts import NIH_CLASSES, write_authors_fundus, write_authors_midrc, write_nih_table

MILD = "Mild Non-Proliferative Diabetic Retinopathy"
MODERATE = "Moderate Non-Proliferative Diabetic Retinopathy"


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _pixels(value: int = 100, shape=(8, 8, 3)) -> np.ndarray:
    return np.full(shape, value, dtype=np.uint8)


def _raises(match: str, function, *args, **kwargs) -> str:
    with pytest.raises(ExampleError, match=match) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- hand-written data dirs ---------------------------------------------------------------------

FUNDUS_TRAIN = [
    {"ImageID": "f0", "Disease": "Normal, Healthy", "Description": "No abnormality observed"},
    {"ImageID": "f1.png", "Disease": f"Abnormal, Glaucoma, {MILD}", "Description": "Enlarged optic cup"},
    {
        "ImageID": "sub/f2",
        "Disease": f"Abnormal,{MODERATE} ",
        "Description": "Microaneurysms and retinal haemorrhages observed",
    },
]
FUNDUS_TEST = [{"ImageID": "f3", "Disease": f"Abnormal, {MILD}", "Description": "Only microaneurysms observed"}]


@pytest.fixture
def fundus_dir(tmp_path: Path) -> Path:
    (tmp_path / "images" / "sub").mkdir(parents=True)
    np.savez(tmp_path / "images" / "f0.npz", image=_pixels(10))
    Image.fromarray(_pixels(20)).save(tmp_path / "f1.png")
    Image.fromarray(_pixels(30)).save(tmp_path / "images" / "sub" / "f2.jpg")
    _write_json(tmp_path / "train.json", FUNDUS_TRAIN)
    _write_json(tmp_path / "test.json", FUNDUS_TEST)
    return tmp_path


def test_fundus_levels_images_and_multi_label_categories(fundus_dir: Path):
    data = load_fundus(fundus_dir)
    assert [level.name for level in data.levels] == ["normality", "category", "description"]
    assert [level.separator for level in data.levels] == [None, ",", None]
    assert [s.image for s in data.train] == [
        fundus_dir / "images" / "f0.npz",
        fundus_dir / "f1.png",
        fundus_dir / "images" / "sub" / "f2.jpg",
    ]
    assert data.train[1].texts == ("Abnormal", f"Glaucoma, {MILD}", "Enlarged optic cup")
    assert data.train[2].texts[:2] == ("Abnormal", MODERATE)
    assert data.train[1].source == "train.json[1]" and data.test[0].source == "test.json[0]"
    assert data.test[0].image == fundus_dir / "f3"  # missing: reported later, by the image dataset
    assert data.classes(0) == ["Abnormal", "Normal"]
    assert data.classes(1) == ["Glaucoma", "Healthy", MILD, MODERATE]
    np.testing.assert_array_equal(data.class_matrix(data.train, 1), [[0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(data.class_matrix(data.test, 0), [[True, False]])
    assert data.class_matrix(data.test, 1).dtype == bool
    assert data.prompts["category"] == {name: name for name in data.classes(1)}


def test_fundus_level_selection_and_prompt_file(fundus_dir: Path):
    _write_json(
        fundus_dir / "class_prompts.json", {"category": {"Glaucoma": "a fundus photo of glaucoma"}, "other": {}}
    )
    data = load_fundus(fundus_dir, levels=("description", "category"))
    assert [level.name for level in data.levels] == ["description", "category"]
    assert data.train[1].texts == ("Enlarged optic cup", f"Glaucoma, {MILD}")
    assert data.prompts["category"]["Glaucoma"] == "a fundus photo of glaucoma"
    assert data.prompts["category"][MILD] == MILD
    assert set(data.prompts) == {"description", "category"}


def test_xray_jsonl_and_level_selection(tmp_path: Path):
    record = {
        "ImageID": "images/x0.png",
        "modality": "DX",
        "study_description_0": "CHEST AP",
        "series_description": "AP",
    }
    lines = [json.dumps(record), "", json.dumps({**record, "ImageID": "x1", "modality": "CR"})]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    _write_json(tmp_path / "test.json", [record])
    data = load_xray(tmp_path)
    assert [level.name for level in data.levels] == ["modality", "study", "series"]
    assert data.train[0].texts == ("DX", "CHEST AP", "AP") and data.train[1].source == "train.jsonl[1]"
    assert data.train[0].image == tmp_path / "images" / "x0.png"
    assert data.classes(0) == ["CR", "DX"]
    assert load_xray(tmp_path, levels=["series", "modality"]).test[0].texts == ("AP", "DX")


def test_generic_csv_and_jsonl_tables_with_a_separator_column(tmp_path: Path):
    (tmp_path / "pics").mkdir()
    Image.fromarray(_pixels(5)).save(tmp_path / "pics" / "a.png")
    (tmp_path / "train.csv").write_text(
        'path,finding,labels\npics/a.png,effusion,"effusion; edema"\npics/b,normal,normal\n'
    )
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "test.jsonl").write_text(
        json.dumps({"path": "c.png", "finding": "edema", "labels": "edema"}) + "\n"
    )
    data = load_table(
        tmp_path / "train.csv", tmp_path / "split" / "test.jsonl", "path", ["labels", "finding"], {"labels": ";"}
    )
    assert [(level.name, level.separator) for level in data.levels] == [("labels", ";"), ("finding", None)]
    assert data.train[0].image == tmp_path / "pics" / "a.png" and data.test[0].image == tmp_path / "split" / "c.png"
    assert data.classes(0) == ["edema", "effusion", "normal"]
    np.testing.assert_array_equal(data.class_matrix(data.train, 0), [[1, 1, 0], [0, 0, 1]])
    assert data.prompts["finding"]["normal"] == "normal"


# --- the field's public layouts ----------------------------------------------------------------


def test_nih_table_with_a_multi_label_column_reads_label_sets(tmp_path: Path):
    files = write_nih_table(tmp_path, rows=10, test_rows=3)
    whole = load_table(files["train"], files["test"], "Image Index", ["Finding Labels", "View Position"])
    assert "Cardiomegaly|Effusion" in whole.classes(0) and "Effusion|Cardiomegaly" in whole.classes(0)  # strings
    data = load_table(
        files["train"], files["test"], "Image Index", ["Finding Labels", "View Position"], {"Finding Labels": "|"}
    )
    assert [(level.name, level.separator) for level in data.levels] == [
        ("Finding Labels", "|"),
        ("View Position", None),
    ]
    assert data.classes(0) == NIH_CLASSES and data.classes(1) == ["AP", "PA"]
    # either order, and stray spaces, are one caption and one label set
    assert data.train[0].texts[0] == data.train[1].texts[0] == "Cardiomegaly|Effusion"
    assert data.train[4].texts[0] == data.train[7].texts[0] == "Infiltration|Mass"
    matrix = data.class_matrix(data.train, 0)
    np.testing.assert_array_equal(matrix[0], matrix[1])
    assert matrix[0].tolist() == [name in ("Cardiomegaly", "Effusion") for name in NIH_CLASSES]
    assert matrix[2].tolist() == [name == "No Finding" for name in NIH_CLASSES]
    assert data.train[0].image == tmp_path / "00000000_000.png" and data.prompts["Finding Labels"]["Mass"] == "Mass"


def test_a_wrong_column_name_lists_the_columns_of_the_file(tmp_path: Path):
    files = write_nih_table(tmp_path, rows=3, test_rows=1)
    columns = r"the file has: 'Image Index', 'Finding Labels', 'Follow-up #', .*'View Position'"
    _raises(
        r"train\.csv: no column 'image' \(--image-column\); " + columns,
        load_table,
        files["train"],
        files["test"],
        "image",
        ["Finding Labels"],
    )
    _raises(
        r"train\.csv: no column 'Finding Label' \(--text-columns\); " + columns,
        load_table,
        files["train"],
        files["test"],
        "Image Index",
        ["Finding Label"],
    )
    (tmp_path / "test.csv").write_text("Image Index,Labels\n00000000_000.png,Effusion\n")
    _raises(
        r"test\.csv: no column 'Finding Labels' \(--text-columns\); the file has: 'Image Index', 'Labels'$",
        load_table,
        files["train"],
        files["test"],
        "Image Index",
        ["Finding Labels"],
    )


def test_authors_fundus_layout_concatenates_the_listed_files_and_maps_image_ids_to_npz(tmp_path: Path):
    root = write_authors_fundus(tmp_path, per_file=4)
    data = load_json_lists(root, "2level_multi_disease_list", "fundus")
    assert (len(data.train), len(data.test)) == (8, 2)
    assert data.train[0].image == root / "All_data_npz" / "SubsetA" / "img_0.npz"
    assert data.train[4].image == root / "All_data_npz" / "SubsetB" / "img_0.npz"
    assert data.train[4].source == "All_json/SubsetB_train.json[0]"
    assert data.test[1].source == "All_json/SubsetA_val.json[1]"
    assert data.train[2].texts == (
        "Abnormal",
        "Age-related Macular Degeneration, Glaucoma",
        "Drusen around the macula; enlarged optic cup",
    )
    assert all(sample.image.is_file() for sample in data.train + data.test)
    selected = load_json_lists(root, "2level_multi_disease_list", "fundus", ["category"])
    assert [level.name for level in selected.levels] == ["category"]


def test_authors_midrc_layout_uses_the_image_id_as_the_path(tmp_path: Path):
    root = write_authors_midrc(tmp_path / "root", tmp_path / "elsewhere", per_file=4)
    data = load_json_lists(root, "MIDRC_list", "xray")
    assert (len(data.train), len(data.test)) == (4, 2)
    assert data.train[0].image == tmp_path / "elsewhere" / "m0.npz"  # absolute ImageID
    assert data.train[1].image == root / "npz" / "m1.npz"  # relative to the data root
    assert data.train[0].texts == ("DX", "CHEST AP", "AP") and data.classes(0) == ["CR", "DX"]


def test_authors_layout_errors_name_the_file_and_what_it_has(tmp_path: Path):
    root = write_authors_fundus(tmp_path, per_file=2)
    listed = r"MIDRC_list_train\.txt: no such file \(list names in .*: 2level_multi_disease_list\)"
    _raises(r"--json-list MIDRC_list: .*" + listed, load_json_lists, root, "MIDRC_list", "fundus")
    (root / "bad_train.txt").write_text("/All_json/SubsetA_train.json\n/All_json/gone.json\n")
    (root / "bad_val.txt").write_text("\n")
    _raises(r"bad_train\.txt line 2: .*All_json/gone\.json: no such file", load_json_lists, root, "bad", "fundus")
    (root / "bad_train.txt").write_text("/All_json/SubsetA_train.json\n")
    _raises(r"bad_val\.txt: lists no JSON file", load_json_lists, root, "bad", "fundus")
    (root / "All_json" / "odd.json").write_text(
        json.dumps(
            [{"ImageID": "/Other/x.jpg", "Disease": "Normal, Healthy", "Description": "No abnormality observed"}]
        )
    )
    (root / "bad_val.txt").write_text("All_json/odd.json\n")
    _raises(
        r"odd\.json\[0\]: ImageID '/Other/x\.jpg' does not start with '/All_data/'",
        load_json_lists,
        root,
        "bad",
        "fundus",
    )
    _write_json(root / "All_json" / "odd.json", [{"ImageID": "/All_data/S/x.jpg", "Disease": "Normal, Healthy"}])
    _raises(
        r"odd\.json: no field 'Description'; the file has: 'ImageID', 'Disease'$",
        load_json_lists,
        root,
        "bad",
        "fundus",
    )
    _raises(r"--data-dir .*nowhere: no such directory", load_json_lists, tmp_path / "nowhere", "x", "fundus")


def test_missing_image_files_are_found_in_one_pass_or_left_out(fundus_dir: Path):
    data = load_fundus(fundus_dir)  # f3 (the only test image) does not exist
    _raises(
        r"^1 of 4 image files do not exist: test\.json\[0\]: .*f3 \(--skip-bad-samples leaves them out\)$",
        check_image_files,
        data,
        False,
    )
    (fundus_dir / "images" / "f0.npz").unlink()
    (fundus_dir / "f1.png").unlink()
    _raises(
        r"^3 of 4 image files do not exist: train\.json\[0\]: .*f0, train\.json\[1\]: .*f1\.png, "
        r"test\.json\[0\]: .*f3 \(",
        check_image_files,
        load_fundus(fundus_dir),
        False,
        3,
    )
    _raises(r"^3 of 4 .*train\.json\[0\]: .*f0 and 2 more \(", check_image_files, load_fundus(fundus_dir), False, 1)
    _raises(r"no image file of the held-out split exists", check_image_files, load_fundus(fundus_dir), True)
    Image.fromarray(_pixels(1)).save(fundus_dir / "f3.png")
    kept = check_image_files(load_fundus(fundus_dir), True)
    assert [s.source for s in kept.train] == ["train.json[2]"] and kept.missing_images == 2 and len(kept.test) == 1
    assert check_image_files(kept, False) is kept


# --- bad input -----------------------------------------------------------------------------------


def test_missing_data_dir_and_split_files(tmp_path: Path):
    _raises(r"--data-dir .*nowhere: no such directory", load_fundus, tmp_path / "nowhere")
    _write_json(tmp_path / "train.json", FUNDUS_TRAIN)
    _raises(r"no test\.json or test\.jsonl", load_fundus, tmp_path)
    _raises(r"absent\.csv: no such file", load_table, tmp_path / "absent.csv", tmp_path / "t.csv", "p", ["a"])
    _raises(r"unsupported record file type '\.txt'", load_table, tmp_path / "a.txt", tmp_path / "t.csv", "p", ["a"])


@pytest.mark.parametrize(
    "content, match",
    [
        ('[{"ImageID": "a",\n  "Disease": }]', r"train\.json: invalid JSON at line 2 column 14"),
        ("[]", r"train\.json: no records"),
        ('{"ImageID": "a"}', r"train\.json: expected a JSON list of records, got dict"),
        ('["a"]', r"train\.json\[0\]: expected an object, got str"),
        (
            '[{"ImageID": "a", "Disease": "Normal, Healthy", "Description": "x"}, '
            '{"ImageID": "b", "Description": "y"}]',
            r"train\.json\[1\]: missing field 'Disease'",
        ),
        (
            '[{"ImageID": 3, "Disease": "Normal, Healthy", "Description": "x"}]',
            r"train\.json\[0\]: field 'ImageID' is int, expected a string",
        ),
        ('[{"ImageID": "a", "Disease": " ", "Description": "x"}]', r"train\.json\[0\]: field 'Disease' is empty"),
        (
            '[{"ImageID": "a", "Disease": "Abnormal", "Description": "x"}]',
            r"train\.json\[0\]: field 'Disease': 'Abnormal' has no category",
        ),
    ],
)
def test_bad_fundus_records(tmp_path: Path, content: str, match: str):
    (tmp_path / "train.json").write_text(content)
    _write_json(tmp_path / "test.json", FUNDUS_TEST)
    _raises(match, load_fundus, tmp_path)


def test_bad_jsonl_line_and_bad_prompt_file(fundus_dir: Path):
    (fundus_dir / "train.json").unlink()
    (fundus_dir / "train.jsonl").write_text(json.dumps(FUNDUS_TEST[0]) + "\n{oops\n")
    _raises(r"train\.jsonl: invalid JSON at line 2", load_fundus, fundus_dir)
    (fundus_dir / "train.jsonl").write_text(json.dumps(FUNDUS_TEST[0]) + "\n")
    _write_json(fundus_dir / "class_prompts.json", {"category": {"Glaucoma": 1}})
    _raises(r"class_prompts\.json: level 'category', class 'Glaucoma': prompt is int", load_fundus, fundus_dir)


def test_unknown_and_repeated_levels_and_bad_table_arguments(fundus_dir: Path):
    _raises(
        r"unknown fundus level 'grade'; valid levels: normality, category, description",
        load_fundus,
        fundus_dir,
        ["grade"],
    )
    _raises(r"fundus level 'category' given twice", load_fundus, fundus_dir, ["category", "category"])
    _raises(
        r"unknown xray level 'category'; valid levels: modality, study, series", load_xray, fundus_dir, ["category"]
    )
    train = fundus_dir / "train.json"
    _raises(r"no text columns", load_table, train, train, "ImageID", [])
    _raises(
        r"separator given for 'Disease', which is not a text column",
        load_table,
        train,
        train,
        "ImageID",
        ["Description"],
        {"Disease": ","},
    )
    _raises(
        r"train\.json: no field 'path' \(--image-column\); the file has: 'ImageID', 'Disease', 'Description'",
        load_table,
        train,
        train,
        "path",
        ["Description"],
    )


# --- images ---------------------------------------------------------------------------------------


def test_read_image_formats(tmp_path: Path):
    np.savez(tmp_path / "gray.npz", image=_pixels(7, (5, 6)))
    np.savez(tmp_path / "rgb.npz", image=np.arange(90, dtype=np.uint8).reshape(5, 6, 3))
    Image.fromarray(_pixels(9, (5, 6))).save(tmp_path / "gray.png")
    Image.fromarray(np.full((5, 6, 4), 200, dtype=np.uint8)).save(tmp_path / "rgba.png")
    Image.fromarray(_pixels(50, (5, 6, 3))).save(tmp_path / "photo.JPG")
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(tmp_path / "deep.png")
    for name in ("gray.npz", "rgb.npz", "gray.png", "rgba.png", "photo.JPG"):
        pixels = read_image(tmp_path / name)
        assert pixels.shape == (5, 6, 3) and pixels.dtype == np.uint8, name
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.npz"), np.arange(90).reshape(5, 6, 3))
    assert (read_image(tmp_path / "gray.npz") == 7).all() and (read_image(tmp_path / "gray.png") == 9).all()
    assert (read_image(tmp_path / "rgba.png") == 200).all()
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[:, :, 0], [[0, 64], [128, 255]])


def _bad_images(folder: Path) -> dict:
    """file name -> the message read_image gives for it."""
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "corrupt.npz").write_bytes(b"PK\x03\x04 truncated zip")
    np.savez(folder / "nokey.npz", pixels=_pixels())
    np.savez(folder / "float.npz", image=np.zeros((4, 4), dtype=np.float32))
    np.savez(folder / "twochannel.npz", image=np.zeros((4, 4, 2), dtype=np.uint8))
    (folder / "image.bmp").write_bytes(b"BM")
    return {
        "missing.png": r"missing\.png: no such image file",
        "corrupt.png": r"corrupt\.png: cannot read image",
        "corrupt.npz": r"corrupt\.npz: cannot read \.npz",
        "nokey.npz": r"nokey\.npz: no 'image' array in the \.npz \(it has: pixels\)",
        "float.npz": r"float\.npz: image has dtype float32, expected uint8",
        "twochannel.npz": r"twochannel\.npz: image has shape \[4, 4, 2\]",
        "image.bmp": r"image\.bmp: unsupported image type '\.bmp'",
    }


def test_read_image_errors_name_the_file(tmp_path: Path):
    for name, match in _bad_images(tmp_path).items():
        _raises(match, read_image, tmp_path / name)


def test_image_dataset_resizes_and_normalises(tmp_path: Path):
    np.savez(tmp_path / "a.npz", image=_pixels(51, (10, 14)))
    samples = [Sample(image=tmp_path / "a.npz", texts=("x",), source="train.json[0]")]
    evaluation = ImageTextDataset(samples, image_size=12, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    index, image, error = evaluation[0]
    assert (index, error) == (0, None) and image.shape == (3, 12, 12) and image.dtype == torch.float32
    expected = (torch.tensor([0.2, 0.2, 0.2]) - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.5, 0.5, 0.25])
    torch.testing.assert_close(image, expected.view(3, 1, 1).expand(3, 12, 12))
    torch.testing.assert_close(evaluation[0][1], image)
    _raises(r"image size must be positive", ImageTextDataset, samples, 0, (0, 0, 0), (1, 1, 1))


def test_image_dataset_returns_errors_and_collate_drops_bad_samples(tmp_path: Path, monkeypatch):
    np.savez(tmp_path / "good.npz", image=_pixels(10))
    bad = _bad_images(tmp_path)
    names = ["good.npz", *bad, "good.npz"]
    samples = [Sample(image=tmp_path / name, texts=("t",), source=f"train.json[{i}]") for i, name in enumerate(names)]
    dataset = ImageTextDataset(samples, image_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    items = [dataset[i] for i in range(len(dataset))]
    for i, match in enumerate(bad.values(), start=1):
        assert items[i][:2] == (i, None)
        assert items[i][2].startswith(f"train.json[{i}]: ") and re.search(match, items[i][2]), items[i][2]
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(dataset), collate_fn=collate, num_workers=1)
    batch = next(iter(loader))
    assert batch.indices.tolist() == [0, len(names) - 1] and batch.indices.dtype == torch.int64
    assert batch.images.shape == (2, 3, 8, 8) and len(batch.errors) == len(bad)
    empty = collate([items[1], items[2]])
    assert empty.indices.shape == (0,) and empty.images.shape[:2] == (0, 3) and len(empty.errors) == 2

    def explode(path):
        raise RuntimeError("decoder\ncrashed")

    monkeypatch.setattr(images_module, "read_image", explode)
    _, image, error = dataset[0]
    assert (
        image is None
        and error == f"train.json[0]: {tmp_path / 'good.npz'}: cannot load image (RuntimeError: decoder crashed)"
    )


# --- synthetic data sets ---------------------------------------------------------------------------


@pytest.mark.parametrize("frame", [{}, {"shift": (0.3, -0.2), "scale": 0.8, "angle": 0.5}])
def test_drawing_windows_match_whole_image_evaluation(frame: dict):
    grid = Grid(48, **frame)
    centres, radii = np.array([[0.1, 0.2], [-0.9, 0.95], [1.05, 0.0], [3.0, 3.0]]), np.array([0.05, 0.1, 0.08, 0.1])
    distance = (
        np.hypot(grid.x[None] - centres[:, 0, None, None], grid.y[None] - centres[:, 1, None, None])
        - radii[:, None, None]
    )
    expected = np.clip(0.5 - distance / grid.pixel, 0, 1).max(axis=0)
    np.testing.assert_allclose(discs(grid, centres, radii), expected)
    assert 0 < expected.sum() and discs(grid, np.zeros((0, 2)), np.zeros(0)).sum() == 0
    line = polylines(grid, [[[-0.5, 0.0], [0.0, 0.0], [0.5, 0.0]]], [0.1])
    distance = np.hypot(np.maximum(np.abs(grid.x) - 0.5, 0), grid.y) - 0.05
    np.testing.assert_allclose(line, np.clip(0.5 - distance / grid.pixel, 0, 1))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "fundus": load_fundus(write_synthetic_fundus(root / "fundus", num_train=150, num_test=30, seed=1)),
        "xray": load_xray(write_synthetic_xray(root / "xray", num_train=150, num_test=30, seed=1)),
    }


def test_synthetic_sets_use_the_real_layouts(synthetic: dict):
    fundus, xray = synthetic["fundus"], synthetic["xray"]
    assert (len(fundus.train), len(fundus.test)) == (150, 30) and (len(xray.train), len(xray.test)) == (150, 30)
    assert fundus.train[0].image.suffix == ".npz" and fundus.train[0].image.parent.name == "images"
    records = json.loads((fundus.train[0].image.parent.parent / "train.json").read_text())
    assert set(records[0]) == {"ImageID", "Disease", "Description"} and "." not in records[0]["ImageID"]
    records = json.loads((xray.train[0].image.parent.parent / "train.json").read_text())
    assert set(records[0]) == {"ImageID", "modality", "study_description_0", "series_description"}
    assert records[0]["ImageID"].startswith("images/") and records[0]["ImageID"].endswith(".png")
    assert Image.open(xray.train[0].image).mode == "L"
    assert read_image(fundus.train[0].image).shape == (64, 64, 3)
    assert set(fundus.classes(0)) == {"Normal", "Abnormal"} and "Healthy" in fundus.classes(1)
    assert fundus.class_matrix(fundus.train, 1).sum(axis=1).max() == 2  # some images have two diseases
    assert 0.15 < fundus.class_matrix(fundus.train, 0)[:, fundus.classes(0).index("Normal")].mean() < 0.45
    assert xray.classes(2) == ["AP", "AP PORTABLE", "LATERAL", "PA"] and xray.classes(0) == ["CR", "DX"]
    for data in (fundus, xray):
        prompts = json.loads((data.train[0].image.parent.parent / "class_prompts.json").read_text())
        assert prompts == {level.name: {name: name for name in data.classes(i)} for i, level in enumerate(data.levels)}


def _images_with(data, samples, level: int, name: str, present: bool = True) -> np.ndarray:
    """Float images [n, H, W, 3] of the samples whose level ``level`` has (or lacks) class ``name``."""
    column = data.class_matrix(samples, level)[:, data.classes(level).index(name)]
    chosen = [sample for sample, has in zip(samples, column, strict=True) if has == present]
    assert len(chosen) >= 5, f"too few samples with {name}={present}"
    return np.stack([read_image(sample.image) for sample in chosen]).astype(np.float64)


def test_synthetic_fundus_lesions_are_visible(synthetic: dict):
    data = synthetic["fundus"]
    samples = data.train + data.test
    groups = {name: _images_with(data, samples, 1, name) for name in data.classes(1)}
    severe = "Severe Non-Proliferative Diabetic Retinopathy"

    def count(name, channel_ratios, min_red):
        """Pixels per image of group ``name`` whose green/red and blue/red ratios lie in the given ranges."""
        x = groups[name]
        red = np.maximum(x[..., 0], 1)
        mask = x[..., 0] > min_red
        for channel, (low, high) in channel_ratios.items():
            mask &= (x[..., channel] / red > low) & (x[..., channel] / red < high)
        return mask.sum(axis=(1, 2))

    assert count("Healthy", {1: (0.25, 0.6)}, 120).mean() > 0.4 * 64 * 64  # an orange-red retina
    dark_red = {name: count(name, {1: (0, 0.18)}, 50) for name in groups}  # lesions: darker and redder than vessels
    assert dark_red["Healthy"].mean() < 2
    assert dark_red[MILD].mean() > dark_red["Healthy"].mean() + 4
    assert dark_red[MODERATE].mean() > dark_red[MILD].mean() + 12
    assert dark_red[severe].mean() > dark_red[MODERATE].mean() + 15
    exudates = {name: count(name, {1: (0.85, 2), 2: (0, 0.42)}, 150) for name in (severe, "Healthy")}
    assert exudates[severe].min() > 3 and exudates["Healthy"].max() == 0
    yellow = {name: count(name, {1: (0.7, 2)}, 150) for name in ("Age-related Macular Degeneration", "Healthy")}
    assert yellow["Age-related Macular Degeneration"].mean() > yellow["Healthy"].mean() + 20  # drusen
    pale_cup = {name: count(name, {2: (0.75, 2)}, 180) for name in ("Glaucoma", "Healthy")}
    assert pale_cup["Glaucoma"].min() > pale_cup["Healthy"].max()


def test_synthetic_xray_views_modalities_and_devices_are_visible(synthetic: dict):
    data = synthetic["xray"]
    samples = data.train + data.test

    def mediastinum_contrast(images):
        """Centre column minus the columns through the lung fields, mid-chest rows (64 px images)."""
        band = images[:, 19:35, :, 0]
        return band[:, :, 30:34].mean(axis=(1, 2)) - band[:, :, [19, 20, 21, 42, 43, 44]].mean(axis=(1, 2))

    lateral = mediastinum_contrast(_images_with(data, samples, 2, "LATERAL"))
    frontal = mediastinum_contrast(_images_with(data, samples, 2, "LATERAL", present=False))
    assert (
        np.median(frontal) > 40 and np.median(lateral) < 10 and np.percentile(frontal, 10) > np.percentile(lateral, 90)
    )

    cr, dx = _images_with(data, samples, 0, "CR"), _images_with(data, samples, 0, "DX")
    cr_black, dx_black = cr[:, :4, :4].mean(axis=(1, 2, 3)), dx[:, :4, :4].mean(axis=(1, 2, 3))
    assert np.median(cr_black) > np.median(dx_black) + 10  # a lifted black level, as a rule...
    assert dx_black.max() > cr_black.min() + 10  # ...not always: the modalities overlap, the set does not saturate

    dx_samples = [sample for sample, is_dx in zip(samples, data.class_matrix(samples, 0)[:, 1], strict=True) if is_dx]

    def with_devices(series: str) -> float:
        """Fraction of the DX images of ``series`` with tubes or ECG leads (brighter than DX bone)."""
        return float(((_images_with(data, dx_samples, 2, series)[..., 0] > 236).sum(axis=(1, 2)) > 5).mean())

    assert with_devices("AP PORTABLE") > 0.5 and 0 < with_devices("AP") < 0.3
    assert with_devices("PA") == with_devices("LATERAL") == 0


def test_synthetic_sets_are_deterministic_for_a_seed(tmp_path: Path):
    for write, load in ((write_synthetic_fundus, load_fundus), (write_synthetic_xray, load_xray)):
        first, second, other = (
            load(write(tmp_path / f"{write.__name__}{k}", num_train=4, num_test=2, seed=seed))
            for k, seed in enumerate((5, 5, 6))
        )
        assert [s.texts for s in first.train + first.test] == [s.texts for s in second.train + second.test]
        for a, b, c in zip(first.train + first.test, second.train + second.test, other.train + other.test, strict=True):
            np.testing.assert_array_equal(read_image(a.image), read_image(b.image))
            assert not np.array_equal(read_image(a.image), read_image(c.image))


def test_ensure_synthetic_writes_once_and_atomically(tmp_path: Path, monkeypatch):
    target = tmp_path / "deep" / "fundus"
    assert ensure_synthetic("fundus", target, num_train=3, num_test=2) == target
    written = (target / "train.json").read_text()
    assert len(json.loads(written)) == 3 and load_fundus(target).test
    ensure_synthetic("fundus", target, num_train=3, num_test=2)  # the same arguments: kept
    assert (target / "train.json").read_text() == written
    _raises(  # other arguments: refused, not silently reused
        r"fundus: holds a synthetic set written with num_train=3 \(asked 5\), seed=0 \(asked 9\)",
        ensure_synthetic, "fundus", target, num_train=5, num_test=2, seed=9,
    )  # fmt: skip
    (target / "synthetic.json").unlink()  # a set written before the manifest existed is kept
    ensure_synthetic("fundus", target, num_train=5, num_test=2, seed=9)
    assert (target / "train.json").read_text() == written
    assert [p.name for p in target.parent.iterdir()] == ["fundus"]  # no staging dir left

    def interrupted(path, pixels):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic_module, "_save_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic("xray", tmp_path / "deep" / "xray", num_train=3, num_test=2)
    assert [p.name for p in target.parent.iterdir()] == ["fundus"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    _raises(r"full: has no train\.json and is not an empty directory", ensure_synthetic, "xray", tmp_path / "full")
    _raises(r"unknown synthetic data kind 'ct'; valid kinds: fundus, xray", ensure_synthetic, "ct", tmp_path / "ct")
    _raises(r"image_size must be at least 32", write_synthetic_xray, tmp_path / "tiny", image_size=8)


def test_synthetic_downstream_set_is_refused_when_written_with_other_sizes(tmp_path: Path):
    from mgll_examples.downstream_data import write_synthetic_downstream

    sizes = {"Train": 4, "Val": 2, "Test": 2}
    write_synthetic_downstream(tmp_path, "RFMiD", sizes, seed=1)
    train = tmp_path / "All_csv_downstream" / "RFMiD_Train.csv"
    written = train.read_text()
    write_synthetic_downstream(tmp_path, "RFMiD", dict(sizes), seed=1)  # the same arguments: kept
    assert train.read_text() == written
    _raises(r"holds a synthetic set written with sizes=.*'Train': 4.*\(asked .*'Train': 6", write_synthetic_downstream,
            tmp_path, "RFMiD", {"Train": 6, "Val": 2, "Test": 2}, seed=1)  # fmt: skip
