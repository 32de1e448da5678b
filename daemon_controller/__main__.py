"""``python -m daemon_controller``: the same as the ``daemon-controller`` command."""

from __future__ import annotations

from ._cli import main

raise SystemExit(main())
