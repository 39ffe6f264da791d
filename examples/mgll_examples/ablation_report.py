"""The ablation's outputs: per-seed values, their mean and sample standard deviation, table, CSVs and plot.

``PerSeed`` maps a configuration's label to ``{seed: {column header: value or None}}``. Each cell
of the table is the mean over the seeds that have a value, with the sample standard deviation
(``statistics.stdev``, n - 1 in the denominator) when there are two or more.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from .report import plt

__all__ = ["Summary", "PerSeed", "ablation_table", "summarize", "write_outputs"]

PerSeed = dict[str, dict[int, dict[str, float | None]]]


@dataclass(frozen=True)
class Summary:
    """One configuration's value of one column over the seeds: mean, sample std (None for n < 2), n."""

    mean: float | None
    std: float | None
    n: int


def summarize(values: list[float | None]) -> Summary:
    """Mean and sample standard deviation of the values that are not None."""
    present = [v for v in values if v is not None]
    if not present:
        return Summary(None, None, 0)
    return Summary(statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present))


def _headers(per_seed: PerSeed) -> list[str]:
    headers: list[str] = []
    for seeds in per_seed.values():
        for values in seeds.values():
            headers += [h for h in values if h not in headers]
    return headers


def _summaries(per_seed: PerSeed, headers: list[str]) -> dict[str, dict[str, Summary]]:
    return {
        label: {h: summarize([values.get(h) for values in seeds.values()]) for h in headers}
        for label, seeds in per_seed.items()
    }


def _cell(summary: Summary, seeds: int) -> str:
    if summary.mean is None:
        return "-"
    text = f"{summary.mean:.3f}" + ("" if summary.std is None else f" ± {summary.std:.3f}")
    return text if summary.n == seeds else f"{text} (n={summary.n})"


def ablation_table(per_seed: PerSeed) -> list[str]:
    """Markdown lines: one row per configuration, one column per value (mean ± sample std over the seeds)."""
    headers = _headers(per_seed)
    summaries = _summaries(per_seed, headers)
    lines = ["| configuration | seeds | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
    for label, seeds in per_seed.items():
        cells = [_cell(summaries[label][h], len(seeds)) for h in headers]
        lines.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _write_csvs(per_seed: PerSeed, headers: list[str], output: Path) -> None:
    summaries = _summaries(per_seed, headers)
    with (output / "ablation.csv").open("w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["configuration", "seeds"] + [f"{h} {part}" for h in headers for part in ("mean", "std", "n")])
        for label, seeds in per_seed.items():
            cells = [(_number(s.mean), _number(s.std), s.n) for s in (summaries[label][h] for h in headers)]
            table.writerow([label, " ".join(map(str, seeds)), *(cell for triple in cells for cell in triple)])
    with (output / "ablation_seeds.csv").open("w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle)
        table.writerow(["configuration", "seed", *headers])
        for label, seeds in per_seed.items():
            table.writerows([label, seed, *(_number(v.get(h)) for h in headers)] for seed, v in seeds.items())


def _plot(per_seed: PerSeed, headers: list[str], path: Path) -> None:
    summaries = _summaries(per_seed, headers)
    figure, axis = plt.subplots(figsize=(max(8, 1.4 * len(per_seed)), 4))
    width = 0.8 / len(headers)
    for k, header in enumerate(headers):
        column = [summaries[label][header] for label in per_seed]
        axis.bar(
            [i + k * width for i in range(len(per_seed))],
            [s.mean or 0.0 for s in column],
            width,
            yerr=[s.std or 0.0 for s in column],
            capsize=2,
            error_kw={"elinewidth": 0.8},
            label=header,
        )
    axis.set_xticks(
        [i + width * (len(headers) - 1) / 2 for i in range(len(per_seed))],
        list(per_seed),
        rotation=20,
        fontsize=7,
        ha="right",
    )
    axis.set_ylim(0, 1)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    seeds = sorted({seed for runs in per_seed.values() for seed in runs})
    spread = f"mean ± sample std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    axis.set_title(f"loss ablation (mean over levels, held-out split; {spread})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(per_seed: PerSeed, output: Path) -> list[str]:
    """Write ``ablation.md``, ``ablation.csv`` (mean, std, n), ``ablation_seeds.csv`` (per seed), ``ablation.png``."""
    table = ablation_table(per_seed)
    (output / "ablation.md").write_text("\n".join(table) + "\n")
    headers = _headers(per_seed)
    _write_csvs(per_seed, headers, output)
    _plot(per_seed, headers, output / "ablation.png")
    return table
