"""The reading of ``docs/check_offline_math.py`` (``make docs-check``): which DOMs show typeset formulas.

The check itself opens the built pages in headless Chromium with the network off (run by
``.ci/run`` after ``make docs``); these tests pin what it accepts on DOMs written here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "check_offline_math.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_offline_math", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


TYPESET = (
    '<html><body><p>Let <span class="math notranslate nohighlight"><mjx-container class="MathJax" jax="CHTML">'
    "<mjx-math><mjx-mi>B</mjx-mi></mjx-math></mjx-container></span> be</p>"
    '<div class="math notranslate nohighlight"><span class="eqno">(1)<a class="headerlink" href="#e">#</a></span>'
    '<mjx-container class="MathJax" display="true"><mjx-math>z</mjx-math>'
    "<mjx-assistive-mml><math><mi>z</mi></math></mjx-assistive-mml></mjx-container></div>"
    "<pre>echo $$</pre><br><img src='x.png'></body></html>"
)
RAW = (
    '<html><head><script defer src="https://cdn.example/mathjax/tex-chtml.js"></script></head><body>'
    '<p>Let <span class="math notranslate nohighlight">\\(B\\)</span> be</p>'
    '<div class="math notranslate nohighlight">\\[z^g_{ij} = s\\]</div></body></html>'
)


def test_typeset_formulas_pass(check):
    report = check.read_math(TYPESET)
    assert (report.formulas, report.typeset, report.raw, report.errors) == (2, 2, [], 0)
    assert report.problems() == []


def test_formulas_left_as_tex_fail_and_name_the_remote_script(check):
    report = check.read_math(RAW)
    assert (report.formulas, report.typeset, report.raw) == (2, 0, ["\\(B\\)", "\\[z^g_{ij} = s\\]"])
    problems = "\n".join(report.problems())
    assert "2 of 2 formulas not typeset" in problems
    assert "https://cdn.example/mathjax/tex-chtml.js" in problems


def test_mathjax_errors_fail(check):
    dom = TYPESET.replace(
        "<mjx-mi>B</mjx-mi>", "<mjx-merror><mjx-mtext>Undefined control sequence</mjx-mtext></mjx-merror>"
    )
    assert check.read_math(dom).problems() == ["1 MathJax errors (mjx-merror)"]


def test_dollars_left_in_prose_fail_but_not_in_code(check):
    assert check.read_math(TYPESET).dollars_in_prose == 0  # the <pre> block's `$$` is code
    dom = TYPESET.replace("<p>Let", "<p>$$ x $$ Let")
    assert check.read_math(dom).problems() == ["'$$' left in the prose 2 times"]


def test_a_page_without_math_elements_fails(check):
    assert check.read_math("<html><body><p>text</p></body></html>").problems() == [
        "no math elements (class 'math') in the DOM"
    ]
