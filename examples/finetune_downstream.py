"""Downstream evaluation of pretrained checkpoints: linear probe or fine-tuning, scored by AUC / ACC / mAP.

    python examples/finetune_downstream.py --synthetic \\
        --checkpoint runs/demo/mgll/last.pt --checkpoint runs/demo/clip/last.pt
    python examples/finetune_downstream.py --data-dir /data/MGLL --name RFMiD \\
        --checkpoint MGLL_fundus.pth --mode finetune
    python examples/finetune_downstream.py --train-file tr.csv --val-file va.csv --test-file te.csv \\
        --data-dir /images --task multiclass --checkpoint runs/fundus/last.pt

``--help`` lists every flag. The engine lives in ``examples/mgll_examples/downstream.py``.
"""

import sys

from mgll_examples.downstream import main

if __name__ == "__main__":
    sys.exit(main())
