"""The paper's loss ablation (Table 3): CLIP, L_P, L_sCLIP, L_sCLIP + L_P, MGLL, 30% texts missing, with/without bias.

    python examples/ablation.py --synthetic                            # synthetic fundus set, tiny model, CPU
    python examples/ablation.py --synthetic --seeds 0,1,2 --downstream  # each configuration per seed: mean ± std
    python examples/ablation.py --synthetic --configs mgll,mgll-bias --downstream
    python examples/ablation.py --kind xray --data-dir /data/MGLL-Xray --model ViT-B-16 --epochs 10

Every pretraining flag applies to all configurations (``--help``). Writes ``<output-dir>/ablation.md``,
``ablation.csv``, ``ablation_seeds.csv``, ``ablation.png`` and one run folder per configuration (and seed).
"""

import sys

from mgll_examples.ablation import main

if __name__ == "__main__":
    sys.exit(main())
