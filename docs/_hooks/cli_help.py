"""MkDocs hook: write the command line's own ``--help`` output into the pages.

A line ``<!-- help: daemon-controller up --help -->`` in a page becomes a text
block with what ``python -m daemon_controller up --help`` prints, so the
reference can never drift from the real options. The command runs with the
Python that runs MkDocs, on an 88-column terminal.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from typing import Any

_MARKER = re.compile(
    r"^<!-- help: daemon-controller(?P<args>(?: [a-z-]+)*) --help -->$", re.MULTILINE
)


def _help(args: str) -> str:
    command = [sys.executable, "-m", "daemon_controller", *shlex.split(args), "--help"]
    env = {**os.environ, "COLUMNS": "88", "NO_COLOR": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        msg = f"{shlex.join(command)} failed ({result.returncode}):\n{result.stderr}"
        raise RuntimeError(msg)
    return result.stdout.rstrip()


def on_page_markdown(markdown: str, **_: Any) -> str:  # noqa: ANN401 - MkDocs passes page, config, files
    """Replace each help marker with the command's output."""

    def block(match: re.Match[str]) -> str:
        return f"```text\n{_help(match['args'])}\n```"

    return _MARKER.sub(block, markdown)
