"""Export a pretrained image tower as a Hugging Face CLIPVisionModel directory (LLaVA, LLaVA-Med, Mini-Gemini ...).

    python examples/pretrain_fundus.py --synthetic --model tiny-vit --output-dir runs/vit
    python examples/export_vision_tower.py --checkpoint runs/vit/last.pt --output-dir runs/vit/vision-tower
    python examples/export_vision_tower.py --checkpoint MGLL_fundus.pth --output-dir mgll-vit-l-14
    python examples/export_vision_tower.py --checkpoint logs/run/checkpoints/epoch_32.pt --model ViT-B-16 \\
        --output-dir vit-b-16-tower

The directory holds config.json, model.safetensors, preprocessor_config.json and mgll_export.json;
every hidden state is checked against the source model before it is written. ``--help`` lists every
flag. The engine lives in ``examples/mgll_examples/export.py``; the guide is docs/guides/mllm-vision-tower.md.
"""

import sys

from mgll_examples.export import main

if __name__ == "__main__":
    sys.exit(main())
