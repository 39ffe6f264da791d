"""Sphinx configuration of the mgll-loss documentation.

The build needs no network (no intersphinx inventories are fetched), and neither do the built pages:
MathJax is copied into ``_static/mathjax`` from the ``sphinx-mathjax-offline`` package (the ``docs``
extra), not loaded from a CDN, so the formulas render on a machine without internet
(``make docs-check`` proves it in headless Chromium). Build with ``make docs`` (warnings are errors).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document the checkout, even without an editable install

import mgll_loss  # noqa: E402

# -- project ---------------------------------------------------------------------------------

project = "mgll-loss"
author = "the mgll-loss authors"
copyright = "the mgll-loss authors"
release = mgll_loss.__version__
version = ".".join(release.split(".")[:2])

# -- general ---------------------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 from the package into _static/mathjax; sets mathjax_path to it
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_copybutton",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False
# No intersphinx: the build must work offline, and nothing is fetched at build time.

# -- MyST (Markdown pages) -------------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc / napoleon (Google-style docstrings: Args:, Shape:, Example:) --------------------

autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_inherit_docstrings = False  # keep nn.Module's generic forward/extra_repr text out
autodoc_preserve_defaults = True
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Shape"]
napoleon_use_rtype = False

# -- HTML ------------------------------------------------------------------------------------

html_theme = "furo"
html_title = f"mgll-loss {release}"
html_static_path: list[str] = []
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
