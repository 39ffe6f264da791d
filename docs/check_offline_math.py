"""Check that the built documentation renders its formulas offline (``make docs-check``).

Opens every built page that has math (Sphinx gives it elements of class ``math``) as a ``file://``
URL in headless Chromium with the network off: every host name unresolvable and every request sent
to a proxy on a closed port. It reads the DOM after the page's scripts ran and fails unless every
formula was typeset by MathJax (an ``mjx-container`` in each math element, no TeX delimiters left
in its text, no ``mjx-merror``) and no ``$$`` is left in the page's prose. A page that loads MathJax
from a CDN fails here, as it shows raw LaTeX to a reader without internet.

Usage: ``python docs/check_offline_math.py [BUILD_DIR]`` (default ``docs/_build/html``); the browser
is ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

TEX_DELIMITERS = ("\\(", "\\)", "\\[", "\\]", "$$")
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
RAW_TEXT_ELEMENTS = {"script", "style", "pre", "code", "textarea"}  # where `$$` is not prose
BUDGET_MS = 20_000  # virtual time for the page's scripts: MathJax typesets a page in well under a second
OFFLINE_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--proxy-server=127.0.0.1:9",  # the discard port, closed: any http(s) request fails
    "--host-resolver-rules=MAP * ~NOTFOUND",  # and no host name resolves
]


@dataclass
class MathReport:
    """What one page's DOM shows of its formulas."""

    formulas: int = 0
    typeset: int = 0
    errors: int = 0
    raw: list[str] = field(default_factory=list)  # the text of formulas left as TeX source
    dollars_in_prose: int = 0
    remote_scripts: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Why a reader offline would not see this page's formulas (empty when they would)."""
        found = []
        if self.formulas == 0:
            found.append("no math elements (class 'math') in the DOM")
        if self.typeset < self.formulas:
            found.append(f"{self.formulas - self.typeset} of {self.formulas} formulas not typeset (no mjx-container)")
        if self.raw:
            found.append(f"{len(self.raw)} formulas left as TeX source, e.g. {self.raw[0][:80]!r}")
        if self.errors:
            found.append(f"{self.errors} MathJax errors (mjx-merror)")
        if self.dollars_in_prose:
            found.append(f"'$$' left in the prose {self.dollars_in_prose} times")
        if found and self.remote_scripts:
            found.append("scripts it loads from the network: " + ", ".join(self.remote_scripts))
        return found


class _MathDom(HTMLParser):
    """Reads a DOM serialised by ``chromium --dump-dom`` into a :class:`MathReport`."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.report = MathReport()
        self.stack: list[str] = []
        self.math_depth: int | None = None  # stack depth of the math element being read
        self.math_text: list[str] = []  # its text outside MathJax's output
        self.math_typeset = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "script" and (attributes.get("src") or "").startswith(("http:", "https:", "//")):
            self.report.remote_scripts.append(str(attributes["src"]))
        if tag in VOID_ELEMENTS:
            return
        self.stack.append(tag)
        if tag == "mjx-merror":
            self.report.errors += 1
        if self.math_depth is None and "math" in (attributes.get("class") or "").split():
            self.math_depth, self.math_text, self.math_typeset = len(self.stack), [], False
        elif self.math_depth is not None and tag == "mjx-container":
            self.math_typeset = True

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_ELEMENTS or tag not in self.stack:
            return
        while self.stack:  # close what the serialiser left open inside it, as a browser would
            depth, closed = len(self.stack), self.stack.pop()
            if self.math_depth == depth:
                self._end_math()
            if closed == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.math_depth is not None:
            if not any(tag.startswith("mjx-") for tag in self.stack[self.math_depth :]):
                self.math_text.append(data)
        elif not RAW_TEXT_ELEMENTS.intersection(self.stack):
            self.report.dollars_in_prose += data.count("$$")

    def _end_math(self) -> None:
        report, text = self.report, "".join(self.math_text).strip()
        report.formulas += 1
        report.typeset += self.math_typeset
        if any(delimiter in text for delimiter in TEX_DELIMITERS):
            report.raw.append(text)
        self.math_depth = None


def read_math(dom: str) -> MathReport:
    """The formulas of a page's DOM (as ``chromium --dump-dom`` prints it): how many, typeset or not."""
    parser = _MathDom()
    parser.feed(dom)
    parser.close()
    return parser.report


def find_chromium() -> str:
    """The Chromium binary: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return str(shutil.which(candidate))
    raise SystemExit("check_offline_math: no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/it)")


def dump_dom_offline(chromium: str, page: Path) -> str:
    """The DOM of ``page`` after its scripts ran, in headless Chromium with the network off."""
    with tempfile.TemporaryDirectory(prefix="mgll-docs-chromium-") as profile:
        command = [chromium, *OFFLINE_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={BUDGET_MS}"]
        result = subprocess.run(
            [*command, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120
        )
    if result.returncode != 0 or "<html" not in result.stdout:
        raise SystemExit(
            f"check_offline_math: Chromium failed on {page} ({result.returncode}):\n{result.stderr[-2000:]}"
        )
    return result.stdout


def pages_with_math(build_dir: Path) -> list[Path]:
    """The built pages whose HTML has math elements."""
    return sorted(
        page
        for page in build_dir.rglob("*.html")
        if "_static" not in page.parts and 'class="math' in page.read_text(encoding="utf-8")
    )


def main(argv: list[str]) -> int:
    build_dir = Path(argv[0] if argv else "docs/_build/html")
    if not (build_dir / "math.html").is_file():
        raise SystemExit(f"check_offline_math: {build_dir}/math.html not found: build the docs first (make docs)")
    chromium, failures, formulas = find_chromium(), 0, 0
    for page in pages_with_math(build_dir):
        report = read_math(dump_dom_offline(chromium, page))
        formulas += report.formulas
        name = page.relative_to(build_dir).as_posix()
        for problem in report.problems():
            print(f"{name}: {problem}")
            failures += 1
        if not report.problems():
            print(f"{name}: {report.typeset} formulas typeset offline")
    if failures:
        print(f"FAILED: the docs in {build_dir} do not render their math offline", file=sys.stderr)
        return 1
    print(f"ok: {formulas} formulas typeset offline in {build_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
