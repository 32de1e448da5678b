"""Every Python example in README.md and docs/ runs here, unless it is marked illustrative.

The conventions, for whoever writes documentation:

* A fenced ```` ```python ```` block **runs**. The blocks of one page run in
  order, in one namespace, with a fresh temporary directory as the current
  directory, so a block can build on the blocks before it (define ``redis``
  once, use it further down) and relative paths (``.pid("redis.pid")``) land
  in that directory.
* A block is **illustrative** (shown, not run) when its info string carries a
  title that starts with "Illustrative", saying why::

      ```python title="Illustrative: needs Apache"

  MkDocs (Material) shows the title above the block, so readers see it too;
  GitHub and PyPI use only the first word of the info string and show a plain
  Python block.
* A block whose title is a **file name** (``title="conftest.py"``,
  ``title="daemons.toml"``, in any language) is written to that file in the
  page's directory instead of being run. When a page writes ``test_*.py``
  files, pytest runs in that directory afterwards, once plainly and once with
  ``-n 2``, and must pass. A written ``daemons.toml`` must load.
* A block that is a snippet include (``--8<-- "examples/x.py:section"``, how
  the docs show parts of the example scripts) loads that script's definitions
  into the page's namespace (as a module, without running its ``main()``),
  after checking that the section exists. The scripts themselves run in
  ``tests/integration/test_examples.py``.
* Other languages (``sh``, ``text``, ``toml`` without a file name, ``ruby``,
  ``mermaid``) are not run.

A page that needs a daemon binary says so in ``REQUIRES`` below; it is
skipped with the reason where the binary is missing, and fails instead where
``DAEMON_CONTROLLER_REQUIRE_DAEMONS=1`` (CI). Whatever a page starts it must
stop: processes it starts carry the test's ``DC_TEST_ID`` (see the sweeper in
``conftest.py``), and afterwards no process may still run from the page's
directory (Redis and nginx overwrite their environment, so they are found by
their command line and working directory).
"""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import MARKER, leftovers

import daemon_controller

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").rglob("*.md")],
    key=lambda page: str(page.relative_to(REPO)),
)
#: Daemon binaries a page's runnable blocks need.
REQUIRES: dict[str, tuple[str, ...]] = {
    "README.md": ("redis-server",),
    "docs/how-to/pytest.md": ("redis-server",),
    "docs/how-to/real-daemons.md": ("redis-server", "memcached"),
}
REQUIRE_ENV = "DAEMON_CONTROLLER_REQUIRE_DAEMONS"

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^`\n]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_TITLE = re.compile(r'title="(?P<title>[^"]*)"')
_INCLUDE = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$')
_FILE_NAME = re.compile(r"^[\w.-]+\.(py|toml|conf|txt|json)$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int  # 1-based line of the first line of the body
    language: str
    title: str | None
    body: str

    @property
    def kind(self) -> str:
        """``run``, ``illustrative``, ``file``, ``include`` or ``other``."""
        if self.title is not None and self.title.lower().startswith("illustrative"):
            return "illustrative"
        if self.title is not None and _FILE_NAME.match(self.title):
            return "file"
        if self.language != "python":
            return "other"
        if _INCLUDE.match(self.body.strip()):
            return "include"
        return "run"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, with their indentation removed."""
    text = page.read_text(encoding="utf-8")
    name = str(page.relative_to(REPO))
    found = []
    for match in _FENCE.finditer(text):
        indent = len(match["indent"])
        body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
        info = match["info"].strip()
        title = _TITLE.search(info)
        found.append(
            Block(
                page=name,
                line=text.count("\n", 0, match.start("body")) + 1,
                language=info.split()[0] if info else "",
                title=title["title"] if title else None,
                body=body,
            )
        )
    return found


def require(programs: tuple[str, ...]) -> None:
    missing = [p for p in programs if not shutil.which(p, path=os.environ["PATH"] + ":/usr/sbin")]
    if not missing:
        return
    reason = f"needs {', '.join(missing)} (Debian/Ubuntu: apt-get install {' '.join(missing)})"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
    pytest.skip(reason)


def run_block(block: Block, namespace: dict[str, object]) -> None:
    # Padded so that tracebacks give the line numbers of the Markdown file.
    code = compile("\n" * (block.line - 1) + block.body, str(REPO / block.page), "exec")
    try:
        exec(code, namespace)  # running the documentation's examples is the point
    except BaseException as err:
        err.add_note(f"in the example at {block.page}:{block.line}")
        raise


def load_include(block: Block, namespace: dict[str, object]) -> None:
    match = _INCLUDE.match(block.body.strip())
    assert match is not None
    path = REPO / match["path"]
    assert path.is_file(), f"{block.page}:{block.line}: no file {match['path']}"
    if match["section"]:
        text = path.read_text(encoding="utf-8")
        for edge in ("start", "end"):
            marker = f"# --8<-- [{edge}:{match['section']}]"
            assert marker in text, f"{block.page}:{block.line}: {path.name} lacks {marker!r}"
    module = runpy.run_path(str(path), run_name="doc_example")
    namespace.update({k: v for k, v in module.items() if not k.startswith("__")})


def write_file(block: Block, directory: Path) -> Path:
    assert block.title is not None
    target = directory / block.title
    target.write_text(block.body, encoding="utf-8")
    return target


def run_pytest(directory: Path, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"pytest {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("page", [str(p.relative_to(REPO)) for p in PAGES])
def test_page_examples(
    page: str, tmp_path: Path, test_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    page_blocks = blocks(REPO / page)
    if not any(b.kind in ("run", "file", "include") for b in page_blocks):
        pytest.skip("no runnable examples on this page")
    require(REQUIRES.get(page, ()))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(MARKER, test_id)
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    written: list[Path] = []
    try:
        for block in page_blocks:
            if block.kind == "run":
                run_block(block, namespace)
            elif block.kind == "include":
                load_include(block, namespace)
            elif block.kind == "file":
                written.append(write_file(block, tmp_path))
        for path in written:
            if path.name == "daemons.toml":
                assert daemon_controller.load(path)
        if any(p.name.startswith("test_") and p.suffix == ".py" for p in written):
            run_pytest(tmp_path)
            run_pytest(tmp_path, "-n", "2")
    finally:
        left = leftovers(str(tmp_path))
    assert not left, f"{page} left processes running (killed now): {left}"


def test_every_python_block_is_run_or_marked():
    """A Python block in the docs is run, included, written to a file, or marked illustrative."""
    counts = {"run": 0, "include": 0, "file": 0, "illustrative": 0}
    for page in PAGES:
        for block in blocks(page):
            if block.language == "python" or block.kind != "other":
                counts[block.kind] += 1
            if block.title is not None:
                assert block.kind in ("illustrative", "file"), (
                    f"{block.page}:{block.line}: a title is either 'Illustrative: why' "
                    f"or a file name, not {block.title!r}"
                )
    print(f"documentation code blocks: {counts}")
    assert counts["run"] >= 15
    assert counts["illustrative"] <= counts["run"] // 2


def test_every_page_with_examples_is_found():
    names = {str(p.relative_to(REPO)) for p in PAGES}
    assert "README.md" in names
    assert "docs/getting-started.md" in names
    assert set(REQUIRES) <= names
