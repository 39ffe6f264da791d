"""The example engine behind ``examples/pretrain_*.py``: data, model, training loop, evaluation.

It lives beside the entry points, not in the ``mgll_loss`` package: it is a reference training
setup that uses the library (the losses and the open_clip adapter), not part of the library.
"""
