"""mgll-loss: multi-label, multi-granular contrastive losses for CLIP-style pretraining.

Implements the losses of "Boosting Medical Visual Understanding From Multi-Granular Language
Learning" (MGLL; Li, Wang, Farsiu, Kinahan; ICLR 2026, arXiv:2511.15943).
"""

from . import functional, targets, utils
from .accumulation import accumulate_step
from .losses import MGLLLoss, PointwiseLoss, SmoothKLLoss, SoftCLIPLoss

__version__ = "0.1.0"

__all__ = [
    "MGLLLoss",
    "PointwiseLoss",
    "SmoothKLLoss",
    "SoftCLIPLoss",
    "accumulate_step",
    "functional",
    "targets",
    "utils",
    "__version__",
]
