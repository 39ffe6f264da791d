"""MGLL pretraining on MGLL-Fundus (or the built-in synthetic fundus set), then evaluation.

    python examples/pretrain_fundus.py --synthetic                     # synthetic data, tiny model, CPU
    python examples/pretrain_fundus.py --synthetic --loss clip         # the plain CLIP baseline
    python examples/pretrain_fundus.py --data-dir /data/MGLL-Fundus --model ViT-B-16 --pretrained openai
    torchrun --nproc_per_node 2 examples/pretrain_fundus.py --synthetic

``--help`` lists every flag. The engine lives in ``examples/mgll_examples``.
"""

import sys

from mgll_examples.cli import main

if __name__ == "__main__":
    sys.exit(main("fundus"))
