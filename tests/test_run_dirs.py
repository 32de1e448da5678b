"""Run directories, prepared templates and instances: ``run_dir()``, ``prepare()``, ``instance()``.

* ``run_dir()`` is private (0700) under the per-user runtime directory, keyed
  like the default PID file, made before the start; ``{run_dir}`` fills the
  commands and paths; the lock file stays outside; ``before_start`` gets the
  ``Daemon`` with the port and directory and can write a config file there;
* ``prepare()`` runs once (across threads and processes) into a template
  named by its inputs; each run directory starts as a copy (modes kept;
  hard links only when asked), keeps its data across restarts, and is copied
  afresh when an input changes; a failing preparation is a ``StartError``;
  a directory the library did not make is left alone;
* ``instance()`` / ``for_worker()`` give each instance its own port, run
  directory and files, and refuse descriptions whose files are fixed;
* ``Project.environment()``: ``<NAME>_PORT`` and ``<NAME>_RUN_DIR`` for exec;
* as root, a daemon run as another user gets a run directory of that user's.

Every daemon carries the ``DC_TEST_ID`` marker; :func:`runtime_files.forget`
removes what they keep in the runtime directory.
"""

from __future__ import annotations

import os
import shutil
import stat
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import BeforeStart, count_starts, release_together, roundtrip
from runtime_files import forget, placed_echo, prepared_echo

from daemon_controller import ConfigError, Daemon, StartError, _platform, load
from daemon_controller._toml import load_project


def run_dir_of(daemon: Daemon) -> Path:
    run_dir = daemon.resolved().config.run_dir
    assert isinstance(run_dir, Path)
    return run_dir


def counted(directory: Path) -> int:
    counter = directory / "counter"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


# -- the run directory -------------------------------------------------------------------------


def test_run_dir_is_private_keyed_and_made_at_the_start(tmp_path, test_id, daemons):
    (tmp_path / "one").mkdir()
    (tmp_path / "other").mkdir()
    one = placed_echo("keyed", tmp_path / "one", test_id)
    other = placed_echo("keyed", tmp_path / "other", test_id)  # same name, another project
    daemons += [one, other]
    run_dir = run_dir_of(one)
    assert run_dir.parent == _platform.runtime_dir()
    assert run_dir.name.startswith("keyed-")
    assert run_dir != run_dir_of(other)
    assert not run_dir.exists()  # describing it makes nothing
    resolved = one.resolved().config
    assert resolved.pid_file == run_dir / "echo.pid"
    assert resolved.lock_file is not None
    assert resolved.lock_file == run_dir.with_name(f"{run_dir.name}.lock")  # beside, outside
    one.start()
    info = run_dir.lstat()
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    assert sorted(p.name for p in run_dir.iterdir()) == ["echo.log", "echo.pid"]
    assert one.status().run_dir == run_dir


def test_before_start_gets_the_daemon_and_writes_a_config_file(tmp_path, test_id, daemons):
    seen: list[Daemon] = []

    def write_config(daemon: Daemon) -> None:
        seen.append(daemon)
        conf = daemon.expand("{run_dir}/echo.conf")
        Path(conf).write_text(f"port {daemon.config.port}\n")

    daemon = placed_echo("configured", tmp_path, test_id).before_start(write_config)
    daemons.append(daemon)
    daemon.start()
    (given,) = seen
    run_dir = run_dir_of(daemon)
    assert given.config.run_dir == run_dir
    assert given.config.port == daemon.read_port()
    assert given.config.pid_file == run_dir / "echo.pid"
    assert "{port}" not in " ".join(given.config.start_command)  # type: ignore[arg-type]
    assert (run_dir / "echo.conf").read_text() == f"port {daemon.read_port()}\n"


def test_zero_argument_before_start_still_works(tmp_path, test_id, daemons):
    record = BeforeStart(tmp_path / "starts.jsonl")  # a callable object taking nothing
    daemon = placed_echo("plain hook", tmp_path, test_id).before_start(record)
    daemons.append(daemon)
    daemon.start()
    assert count_starts(tmp_path / "starts.jsonl") == 1


def test_a_given_run_dir_is_made_private_and_filled_in(tmp_path, test_id, daemons):
    where = tmp_path / "state"  # made by the start; its parent must exist, as for PID files
    daemon = placed_echo("given dir", tmp_path, test_id).run_dir(where)
    daemons.append(daemon)
    daemon.start()
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert (where / "echo.pid").read_text().strip() == str(daemon.read_pid())


# -- instances ---------------------------------------------------------------------------------


def test_instances_have_their_own_port_run_dir_and_files(tmp_path, test_id, daemons):
    base = placed_echo("multi", tmp_path, test_id)
    first, second = base.instance("a"), base.for_worker("gw1")
    daemons += [first, second, base]
    first.start()
    second.start()
    assert first.is_running()
    assert second.is_running()
    assert not base.is_running()  # a third instance, never started
    assert first.read_port() != second.read_port()
    assert first.read_pid() != second.read_pid()
    assert len({run_dir_of(d) for d in (base, first, second)}) == 3
    for daemon in (first, second):
        assert roundtrip(daemon.read_port() or 0) == b"hello daemon\n"
    assert second == base.instance("gw1")


def test_for_worker_reads_the_xdist_worker(tmp_path, test_id, monkeypatch):
    base = placed_echo("worker", tmp_path, test_id)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert base.for_worker().config.instance == "gw3"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "master")
    assert base.for_worker() is base
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert base.for_worker() is base  # without xdist: one instance


def test_instance_refuses_what_every_instance_would_share(tmp_path, test_id):
    base = placed_echo("fixed files", tmp_path, test_id)
    for changed, what in [
        (base.pid(tmp_path / "x.pid"), "pid()"),
        (base.log(tmp_path / "x.log"), "log()"),
        (base.lock(tmp_path / "x.lock"), "lock()"),
        (base.port(6390), "port(number)"),
        (base.run_dir(tmp_path / "d"), "run_dir(path)"),
    ]:
        with pytest.raises(ValueError, match="would share what") as caught:
            changed.instance("gw0")
        assert what in str(caught.value)
    with pytest.raises(ValueError, match="non-empty"):
        base.instance("")


# -- prepared templates ------------------------------------------------------------------------


def test_preparation_runs_once_and_each_run_dir_starts_as_a_copy(tmp_path, test_id, daemons):
    base = prepared_echo("seeded", tmp_path, test_id)
    first, second = base.instance("a"), base.instance("b")
    daemons += [first, second]
    first.start()
    second.start()
    assert counted(tmp_path) == 1
    prefix = base.resolved().config.prepare.template
    (template,) = [p for p in prefix.parent.glob(f"{prefix.name}-*") if p.is_dir()]
    for daemon in (first, second):
        data = run_dir_of(daemon) / "data"
        assert (data / "seed.txt").read_text() == "seed 1\n"
        assert stat.S_IMODE(data.stat().st_mode) == 0o750  # modes kept
        assert stat.S_IMODE((data / "seed.txt").stat().st_mode) == 0o640
        assert stat.S_IMODE(run_dir_of(daemon).stat().st_mode) == 0o700
        # A copy, not the template's file: writing to it changes nothing else.
        assert (data / "seed.txt").stat().st_ino != (template / "data/seed.txt").stat().st_ino
    (run_dir_of(first) / "data" / "seed.txt").write_text("changed by a\n")
    assert (run_dir_of(second) / "data" / "seed.txt").read_text() == "seed 1\n"
    assert (template / "data" / "seed.txt").read_text() == "seed 1\n"


def test_data_survives_restarts_and_changed_inputs_prepare_again(tmp_path, test_id, daemons):
    daemon = prepared_echo("evolving", tmp_path, test_id)
    daemons.append(daemon)
    daemon.start()
    data = run_dir_of(daemon) / "data"
    (data / "written.txt").write_text("by a test\n")
    daemon.restart()
    daemon.stop()
    daemon.start()
    assert (data / "written.txt").exists()  # same template: the run directory is kept
    assert counted(tmp_path) == 1
    daemon.stop()
    (tmp_path / "seed.txt").write_text("seed 2\n")  # an input changes
    daemon.start()
    assert counted(tmp_path) == 2
    assert (data / "seed.txt").read_text() == "seed 2\n"
    assert not (data / "written.txt").exists()  # copied afresh from the new template
    base = daemon.resolved().config.prepare.template
    assert len([p for p in base.parent.glob(f"{base.name}-*") if p.is_dir()]) == 1


def test_a_fresh_preparation_copies_at_every_start_but_not_at_a_restart(tmp_path, test_id, daemons):
    daemon = prepared_echo("fresh", tmp_path, test_id).prepare("mkdir {run_dir}/data", fresh=True)
    daemons.append(daemon)
    daemon.start()
    written = run_dir_of(daemon) / "data" / "written.txt"
    written.write_text("by a test\n")
    daemon.restart()
    assert written.exists()  # a restart is the same session: the data stays
    daemon.stop()
    daemon.start()
    assert not written.exists()  # a new start begins from the prepared state
    assert (run_dir_of(daemon) / "data").is_dir()


def test_what_an_interrupted_copy_or_preparation_left_is_removed(tmp_path, test_id, daemons):
    daemon = prepared_echo("tidy", tmp_path, test_id)
    daemons.append(daemon)
    run_dir = run_dir_of(daemon)
    template = daemon.resolved().config.prepare.template
    leftovers = [
        run_dir.with_name(f".{run_dir.name}.new-dead"),
        run_dir.with_name(f".{run_dir.name}.old-dead"),
        template.with_name(f"{template.name}.partial-dead"),
        template.with_name(f"{template.name}-0123456789abcdef"),  # other inputs, long ago
    ]
    for path in leftovers:
        (path / "data").mkdir(parents=True)
    daemon.start()
    assert [path for path in leftovers if path.exists()] == []
    assert (run_dir / "data" / "seed.txt").exists()


def test_preparation_runs_once_for_four_processes(tmp_path, test_id, daemons, child):
    script = textwrap.dedent("""
        from pathlib import Path
        from runtime_files import prepared_echo
        mine = prepared_echo("crowd", Path(args[0]), args[1]).for_worker(args[2])
        tell_parent("ready")
        wait_for_parent()
        mine.start()
        tell_parent(mine.read_port())
    """)
    workers = [f"gw{i}" for i in range(4)]
    base = prepared_echo("crowd", tmp_path, test_id)
    daemons += [base.for_worker(w) for w in workers]
    children = [child(script, str(tmp_path), test_id, w) for w in workers]
    release_together(children)
    ports = [proc.message() for proc in children]
    for proc in children:
        proc.finish()
    assert counted(tmp_path) == 1
    assert len(set(ports)) == 4
    assert all(isinstance(port, int) for port in ports)


def test_hardlinked_copies_share_the_templates_files(tmp_path, test_id, daemons):
    daemon = prepared_echo("linked", tmp_path, test_id, hardlinks=True)
    daemons.append(daemon)
    daemon.start()
    base = daemon.resolved().config.prepare.template
    (template,) = [p for p in base.parent.glob(f"{base.name}-*") if p.is_dir()]
    copied = run_dir_of(daemon) / "data" / "seed.txt"
    assert copied.stat().st_ino == (template / "data" / "seed.txt").stat().st_ino


def test_a_callable_preparation_gets_the_template_directory(tmp_path, test_id, daemons):
    calls: list[Path] = []

    def prepare(directory: Path) -> None:
        calls.append(directory)
        (directory / "made.txt").write_text("by a function\n")

    daemon = placed_echo("by function", tmp_path, test_id).prepare(prepare)
    daemons.append(daemon)
    daemon.start()
    daemon.stop()
    daemon.start()
    assert len(calls) == 1
    assert (run_dir_of(daemon) / "made.txt").read_text() == "by a function\n"


def test_a_failed_preparation_is_a_start_error_with_its_output(tmp_path, test_id, daemons):
    daemon = placed_echo("unprepared", tmp_path, test_id).prepare(
        "echo 'schema.sql: syntax error' >&2; exit 4"
    )
    daemons.append(daemon)
    with pytest.raises(StartError) as caught:
        daemon.start()
    assert "its preparation failed" in str(caught.value)
    assert "schema.sql: syntax error" in str(caught.value)
    assert caught.value.exit_status == 4
    assert not daemon.is_running()
    base = daemon.resolved().config.prepare.template
    assert not [p for p in base.parent.glob(f"{base.name}[-.]*") if p.is_dir()]


def test_a_run_dir_the_library_did_not_make_is_left_alone(tmp_path, test_id, daemons):
    where = tmp_path / "precious"
    where.mkdir()
    (where / "data.db").write_text("keep me\n")
    daemon = prepared_echo("careful", tmp_path, test_id).run_dir(where)
    daemons.append(daemon)
    with pytest.raises(StartError, match="was not copied from its prepared template"):
        daemon.start()
    assert (where / "data.db").read_text() == "keep me\n"
    assert counted(tmp_path) == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_daemon_run_as_another_user_gets_a_run_dir_of_that_user(
    shared_tmp, test_id, daemons, world_readable_echo_server
):
    # Our runtime directory is closed to others: nobody could not enter it.
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for user nobody")
    base = prepared_echo("as nobody", shared_tmp, test_id)
    argv = list(base.config.start_command)  # type: ignore[arg-type]
    argv[:2] = [python, str(world_readable_echo_server)]
    (shared_tmp / "seed.txt").chmod(0o644)
    daemon = base.start_with(argv).user("nobody")
    daemons.append(daemon)
    daemon.start()
    run_dir = run_dir_of(daemon)
    assert run_dir.parent.name == "daemon-controller-65534"
    assert run_dir.parent.stat().st_uid == 65534
    assert run_dir.stat().st_uid == 65534
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert (run_dir / "data" / "seed.txt").stat().st_uid == 65534  # prepared as nobody
    assert psutil.Process(daemon.read_pid()).uids().real == 65534
    assert counted(shared_tmp) == 1


# -- what exec exports, and daemons.toml --------------------------------------------------------


def test_project_environment_names_port_and_run_dir(tmp_path, test_id):
    (tmp_path / "daemons.toml").write_text(
        textwrap.dedent(f"""
        [daemons.my-db]
        start = {list(placed_echo("x", tmp_path, test_id).config.start_command)!r}
        port = "auto"
        run_dir = "auto"
        ping = "tcp://127.0.0.1:{{port}}"
        pid = "{{run_dir}}/echo.pid"
        log = "{{run_dir}}/echo.log"
        env = {{ DC_TEST_ID = "{test_id}" }}
        """).replace("'", '"')
    )
    project = load_project(tmp_path / "daemons.toml")
    database = project.daemons["my-db"]
    try:
        assert project.environment() == {"MY_DB_RUN_DIR": str(run_dir_of(database))}
        database.start()
        assert project.environment() == {
            "MY_DB_PORT": str(database.read_port()),
            "MY_DB_RUN_DIR": str(run_dir_of(database)),
        }
    finally:
        database.stop()
        forget(database)


def test_toml_run_dir_and_prepare_keys(tmp_path):
    (tmp_path / "daemons.toml").write_text(
        textwrap.dedent("""
        [daemons.short]
        start = "serve {run_dir}"
        ping = "unix://{run_dir}/serve.sock"
        pid = "{run_dir}/serve.pid"
        log = "{run_dir}/serve.log"
        prepare = "initdb {run_dir}/data"

        [daemons.table]
        start = ["serve"]
        ping = "true"
        pid = "run/t.pid"
        log = "run/t.log"
        run_dir = "state/t"
        prepare = { command = ["load", "{run_dir}"], inputs = ["schema.sql"], fresh = true }
        """)
    )
    daemons = load(tmp_path / "daemons.toml")
    short, table = daemons["short"], daemons["table"]
    assert short.config.run_dir == "auto"  # prepare implies a run directory
    assert short.config.pid_file == Path("{run_dir}/serve.pid")
    assert short.config.prepare.command == "initdb {run_dir}/data"
    run_dir = run_dir_of(short)
    assert short.resolved().config.ping.describe() == f"unix://{run_dir}/serve.sock"
    assert table.config.run_dir == tmp_path / "state" / "t"
    assert table.config.prepare.command == ("load", "{run_dir}")
    assert table.config.prepare.inputs == (tmp_path / "schema.sql",)
    assert table.config.prepare.fresh is True
    assert table.config.prepare.hardlinks is False


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("prepare = { commands = 'x' }", "unknown key"),
        ("prepare = { inputs = ['a'] }", "needs a 'command'"),
        ("prepare = { command = 'x', inputs = 'a' }", "list of paths"),
        ("run_dir = 3", "non-empty string"),
    ],
)
def test_toml_prepare_and_run_dir_errors(tmp_path, line, problem):
    (tmp_path / "daemons.toml").write_text(
        f'[daemons.x]\nstart = "true"\nping = "true"\npid = "x.pid"\nlog = "x.log"\n{line}\n'
    )
    with pytest.raises(ConfigError, match=problem):
        load(tmp_path / "daemons.toml")
