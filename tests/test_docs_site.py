"""The documentation site: complete where it must be, and readable in a real browser.

* The reference documents every public name, through public import paths.
* The ``daemons.toml`` reference lists the keys the loader accepts.
* The built site, served over HTTP, renders in headless Chromium: the home
  page's title and navigation, and the API reference listing ``Daemon.start``.
  Skipped with the reason where Chromium or MkDocs is missing, unless
  ``DAEMON_CONTROLLER_REQUIRE_DOCS=1`` (CI), which makes that a failure.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
from helpers import MARKER, wait_until

import daemon_controller

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[1]

REQUIRE_ENV = "DAEMON_CONTROLLER_REQUIRE_DOCS"


def reference_text() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "docs" / "reference").glob("*.md")))


def test_reference_documents_every_public_name():
    documented = set(re.findall(r"^::: (\S+)$", reference_text(), re.MULTILINE))
    expected = {f"daemon_controller.{name}" for name in daemon_controller.__all__}
    expected.discard("daemon_controller.__version__")  # described in prose
    expected.add("daemon_controller.pytest_plugin.daemon_fixture")
    assert expected <= documented, f"not in docs/reference: {sorted(expected - documented)}"
    private = sorted(path for path in documented if "._" in path)
    assert not private, f"reference pages must use public import paths: {private}"
    assert "__version__" in (REPO / "docs" / "reference" / "api.md").read_text()


def test_daemons_toml_reference_lists_the_accepted_keys(tmp_path: Path):
    # The loader names the keys it knows when it meets one it does not.
    config = tmp_path / "daemons.toml"
    config.write_text('[daemons.x]\nstart = "true"\nping = "true"\nno_such_key = 1\n')
    with pytest.raises(daemon_controller.ConfigError) as caught:
        daemon_controller.load(config)
    accepted = set(re.findall(r"\w+", caught.value.problem.partition("known keys:")[2]))
    table = (REPO / "docs" / "reference" / "daemons-toml.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
    assert accepted, caught.value.problem
    assert documented <= accepted, f"documented but not accepted: {documented - accepted}"
    assert accepted == documented, f"accepted but not documented: {accepted - documented}"


# -- the site in a browser ---------------------------------------------------------------


def unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        unavailable("chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        unavailable("mkdocs is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site on 127.0.0.1, a free port, from a thread of this process."""
    handler = functools.partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def in_group(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    found = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):  # gone meanwhile
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


def chromium(executable: str, profile: Path, test_id: str, *args: str) -> str:
    """Run headless Chromium once; return what it printed. It is killed by PID afterwards."""
    command = [
        executable,
        "--headless",
        "--no-sandbox",  # we may be root (CI); the sandbox refuses to run as root
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its helpers share its process group, ours is not touched
        env={**os.environ, MARKER: test_id},
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        # Chromium's helper processes (zygote, renderer) are in its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not in_group(proc.pid), timeout=10), in_group(proc.pid)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{err[-3000:]}"
    return out


def test_site_renders_in_chromium(
    chromium_path: str, served: str, tmp_path: Path, test_id: str
) -> None:
    home = chromium(chromium_path, tmp_path / "profile", test_id, "--dump-dom", f"{served}/")
    title = re.search(r"<title>(.*?)</title>", home, re.DOTALL)
    assert title is not None, home[:2000]
    assert title[1].strip() == "daemon_controller"
    for entry in ("Getting started", "Tutorials", "How-to guides", "Reference", "Explanation"):
        assert re.search(rf'class="md-nav__link[^"]*"[^>]*>\s*(<[^>]+>\s*)*{entry}', home), entry
    assert "Starts on demand, once." in home

    reference = chromium(
        chromium_path, tmp_path / "profile", test_id, "--dump-dom", f"{served}/reference/api/"
    )
    assert 'id="daemon_controller.Daemon.start"' in reference
    assert re.search(r">\s*start\s*<", reference)
    assert "Start the daemon and return once it answers pings." in reference

    shot = tmp_path / "home.png"
    chromium(
        chromium_path,
        tmp_path / "profile",
        test_id,
        f"--screenshot={shot}",
        "--window-size=1280,900",
        "--hide-scrollbars",
        f"{served}/",
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000, "a blank page compresses to a few kilobytes"
    print(f"home page screenshot: {shot}")
