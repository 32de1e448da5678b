"""The command line's engine: run an action over many daemons in dependency order.

Each daemon begins as soon as what it needs has succeeded; results and
failures are printed the moment they come.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, NamedTuple

from ._cli_output import FAILED, FAILED_TAG, OK, OK_TAG, SKIPPED_TAG, Output, live
from ._errors import DaemonError

if TYPE_CHECKING:
    from collections.abc import Callable

    from . import _toml
    from ._daemon import Daemon

# -- running an action on many daemons ---------------------------------------------------


class _Plan(NamedTuple):
    """What to do to which daemons, and in which order."""

    verb: str  # for the live line: "starting"
    infinitive: str  # for messages: "start"
    needs: dict[str, set[str]]  # each daemon: the daemons whose action must succeed first
    reverse: bool  # needs are the daemons that start after this one (stopping)


def forward_plan(project: _toml.Project, names: list[str], verb: str, infinitive: str) -> _Plan:
    wanted = set(names)
    needs = {n: set(project.after.get(n, ())) & wanted for n in names}
    return _Plan(verb, infinitive, needs, reverse=False)


def backward_plan(project: _toml.Project, names: list[str], verb: str, infinitive: str) -> _Plan:
    wanted = set(names)
    needs = {n: {m for m in wanted if n in project.after.get(m, ())} for n in names}
    return _Plan(verb, infinitive, needs, reverse=True)


class _Run:
    """One run of an action over a plan: what is pending, running, done and failed.

    Each daemon begins as soon as the daemons it needs succeeded; a result or
    a failure is printed the moment it comes; a daemon whose dependency failed
    is skipped, saying which one. With ``keep_going`` off (``exec``: the
    command will not run anyway), nothing new begins after the first failure.
    """

    def __init__(
        self,
        out: Output,
        project: _toml.Project,
        plan: _Plan,
        action: Callable[[str, Daemon], str | None],
        *,
        keep_going: bool,
    ) -> None:
        self.out = out
        self.project = project
        self.plan = plan
        self.action = action
        self.keep_going = keep_going
        self.pending = set(plan.needs)
        self.succeeded: set[str] = set()
        self.roots: dict[str, list[str]] = {}  # failed or skipped -> the failures behind it
        self.running: dict[Future[str | None], str] = {}
        self.lock = threading.Lock()  # running is read by the live status line

    def active(self) -> dict[str, Daemon]:
        """The daemons being acted on now."""
        with self.lock:
            names = sorted(self.running.values())
        return {name: self.project.daemons[name] for name in names}

    def __call__(self) -> int:
        """Run everything; the exit code."""
        pool = ThreadPoolExecutor(max_workers=max(1, len(self.pending)))
        with pool, live(self.out, self.plan.verb, self.active):
            while self.pending or self.running:
                self._skip_blocked()
                for name in sorted(n for n in self.pending if self.plan.needs[n] <= self.succeeded):
                    self.pending.discard(name)
                    future = pool.submit(self.action, name, self.project.daemons[name])
                    with self.lock:
                        self.running[future] = name
                if not self.running:
                    break  # nothing left can begin (cannot happen: 'after' has no cycles)
                finished, _ = wait(self.running, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=self.running.__getitem__):
                    self._report(future)
        return FAILED if self.roots else OK

    def _skip_blocked(self) -> None:
        """Skip every pending daemon that can no longer begin, saying why."""
        changed = True
        while changed:  # a skip can block what needs the skipped daemon
            changed = False
            for name in sorted(self.pending):
                failed = sorted(d for d in self.plan.needs[name] if d in self.roots)
                if failed:
                    dep = failed[0]
                    self._skip(name, self._reason(dep), self.roots[dep])
                    changed = True
                elif self.roots and not self.keep_going:
                    causes = sorted({r for rs in self.roots.values() for r in rs})
                    reason = f"{', '.join(causes)} failed to {self.plan.infinitive}"
                    self._skip(name, reason, causes)
                    changed = True

    def _skip(self, name: str, reason: str, causes: list[str]) -> None:
        self.pending.discard(name)
        self.roots[name] = causes
        self.out.line(SKIPPED_TAG, f" {name}: {reason}")

    def _reason(self, dep: str) -> str:
        """Why a daemon that needs ``dep`` is skipped."""
        roots = self.roots[dep]
        if dep in roots:
            what = f"failed to {self.plan.infinitive}"
        else:
            what = f"was skipped ({', '.join(roots)} failed to {self.plan.infinitive})"
        if self.plan.reverse:
            return f"{dep} starts after it and {what}"
        return f"it starts after {dep}, which {what}"

    def _report(self, future: Future[str | None]) -> None:
        with self.lock:
            name = self.running.pop(future)
        try:
            result = future.result()
        except DaemonError as err:
            self.roots[name] = [name]
            self.out.line(FAILED_TAG, f" {name}: {type(err).__name__}")
            self.out.block(str(err))
            return
        self.succeeded.add(name)
        if result:
            self.out.line(OK_TAG, f" {name}: {result}")


def run_plan(
    out: Output,
    project: _toml.Project,
    plan: _Plan,
    action: Callable[[str, Daemon], str | None],
    *,
    keep_going: bool = True,
) -> int:
    """Run ``action`` on every daemon of ``plan`` (see :class:`_Run`); the exit code."""
    return _Run(out, project, plan, action, keep_going=keep_going)()
