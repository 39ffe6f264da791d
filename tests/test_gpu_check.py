"""``make gpu-check`` runs end to end in its CPU dry run, so it cannot rot.

Tiny sizes, triton through the interpreter.
"""

from __future__ import annotations

import csv
import json

from benchmarks import gpu_check


def test_dry_run_passes_and_writes_its_results(tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["compile"] == "ok"
    assert set(summary["parity"]) == {f"{b} {d}" for b in gpu_check.BACKENDS for d in ("float32", "bfloat16")}
    assert set(summary["parity"].values()) == {"ok"}
    assert summary["syncs"] == {backend: "ok" for backend in gpu_check.BACKENDS}
    with open(tmp_path / "results.csv") as handle:
        timed = {row["backend"] for row in csv.DictReader(handle)}
    assert {"auto", "batched", "dense", "chunked", "triton", "clip", "naive"} <= timed
    assert (tmp_path / "time.png").stat().st_size > 0
