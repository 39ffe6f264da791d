"""The example engine's data layer: record loaders, image reading and batching, synthetic data sets.

``records`` (what a data set is), ``formats`` (the MGLL-Fundus, MGLL-Xray and generic-table
loaders), ``json_lists`` (the authors' list-file layout), ``images`` (reading images, the torch
dataset and collate) and ``synthetic`` (writing synthetic data sets in the real layouts); their
public names are re-exported here.
"""

from .formats import FUNDUS_LEVELS, XRAY_LEVELS, load_fundus, load_table, load_xray
from .images import Batch, ImageTextDataset, check_image_files, collate, read_image
from .json_lists import load_json_lists
from .records import Dataset, Level, Sample
from .synthetic import ensure_synthetic, write_synthetic_fundus, write_synthetic_xray

__all__ = [
    "Level",
    "Sample",
    "Dataset",
    "FUNDUS_LEVELS",
    "XRAY_LEVELS",
    "load_fundus",
    "load_xray",
    "load_table",
    "load_json_lists",
    "read_image",
    "check_image_files",
    "ImageTextDataset",
    "Batch",
    "collate",
    "write_synthetic_fundus",
    "write_synthetic_xray",
    "ensure_synthetic",
]
