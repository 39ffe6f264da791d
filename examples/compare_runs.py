"""Print the metric tables of finished pretraining runs side by side (and, with --plot, plot them together).

python examples/compare_runs.py runs/demo/mgll runs/demo/clip
python examples/compare_runs.py runs/demo/mgll runs/demo/clip --plot runs/demo/comparison.png
"""

import argparse
import sys
from pathlib import Path

from mgll_examples.cli import compare
from mgll_examples.errors import ExampleError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output directories of finished runs")
    parser.add_argument("--plot", type=Path, help="also write a comparison PNG there")
    args = parser.parse_args()
    try:
        print(compare(args.runs, args.plot))
    except ExampleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
