"""Adapters that turn open_clip and Hugging Face CLIP models into :class:`~mgll_loss.MGLLLoss` inputs.

- :mod:`mgll_loss.adapters.open_clip`: :class:`~mgll_loss.adapters.open_clip.MultiGranularOpenCLIP`
  (``pip install "mgll-loss[open_clip]"``);
- :mod:`mgll_loss.adapters.hf`: :class:`~mgll_loss.adapters.hf.MultiGranularHFCLIP` and the
  ``Trainer`` helpers (``pip install "mgll-loss[hf]"``).

Each wrapper encodes the images once and all G levels of text in one batched text-tower call and
returns a dict whose keys are the keyword arguments of :meth:`MGLLLoss.forward
<mgll_loss.MGLLLoss.forward>`, so ``loss(**wrapper(images, texts), labels=labels)`` works. The
frameworks are imported only when an adapter is used, so importing these modules never fails.
"""
