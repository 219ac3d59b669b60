"""The shell executor against real subprocesses: argv, env, output caps, timeouts, cleanup."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import pytest
from conftest import live_members

from runner.errors import ShellStartError
from runner.executors.shell import ShellOutcome, run_shell

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(5)]

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
# A group member that starts and then sleeps 100 s in the background as well as in front.
GROUP = "echo $$ > pgid; sleep 100 & sleep 100"


async def _assert_group_gone(pgid: int) -> None:
    # SIGKILL is delivered asynchronously: give the kernel a moment to finish the exits.
    # Polling, because no event tells us when another process has exited; the deadline is
    # generous because a loaded 2-core machine can take a while to finish the exits.
    with anyio.move_on_after(3):
        while live_members(pgid):  # noqa: ASYNC110
            await anyio.sleep(0.01)
    assert live_members(pgid) == []


async def test_string_runs_through_sh(tmp_path: Path) -> None:
    outcome = await run_shell('echo "$((1 + 2))" | tr 3 x', env=ENV, cwd=tmp_path)
    assert outcome == ShellOutcome(0, "x\n", "", False, False, False)


async def test_list_runs_as_argv_without_a_shell(tmp_path: Path) -> None:
    outcome = await run_shell(["echo", "$HOME", "a; b", "*"], env=ENV, cwd=tmp_path)
    assert outcome.stdout == "$HOME a; b *\n"


async def test_parameter_with_shell_syntax_is_passed_verbatim_never_run(tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("keep me")
    value = "x; touch pwned; rm -rf victim $(touch pwned2)"
    env = {**ENV, "PARAM_X": value}
    outcome = await run_shell('printf "%s" "$PARAM_X"', env=env, cwd=tmp_path)
    assert outcome.stdout == value
    assert (tmp_path / "victim").exists()
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


async def test_env_is_the_complete_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_TEST_LEAK", "parent")
    outcome = await run_shell(["env"], env={**ENV, "ONLY": "a b=c"}, cwd=tmp_path)
    lines = outcome.stdout.splitlines()
    assert "ONLY=a b=c" in lines
    assert not any(line.startswith("RUNNER_TEST_LEAK=") for line in lines)


async def test_cwd_is_honoured(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    outcome = await run_shell(["pwd", "-P"], env=ENV, cwd=tmp_path / "sub")
    assert outcome.stdout == f"{(tmp_path / 'sub').resolve()}\n"


async def test_stdin_is_empty(tmp_path: Path) -> None:
    outcome = await run_shell(["cat"], env=ENV, cwd=tmp_path)
    assert outcome == ShellOutcome(0, "", "", False, False, False)


async def test_non_zero_exit_code(tmp_path: Path) -> None:
    outcome = await run_shell("echo partial; exit 7", env=ENV, cwd=tmp_path)
    assert (outcome.exit_code, outcome.stdout, outcome.timed_out) == (7, "partial\n", False)


async def test_killed_by_an_outside_signal_gives_minus_the_signal(tmp_path: Path) -> None:
    outcome = await run_shell("kill -TERM $$", env=ENV, cwd=tmp_path)
    assert (outcome.exit_code, outcome.timed_out) == (-15, False)


async def test_stdout_and_stderr_are_kept_apart(tmp_path: Path) -> None:
    outcome = await run_shell("echo out; echo err >&2; echo out2", env=ENV, cwd=tmp_path)
    assert (outcome.stdout, outcome.stderr) == ("out\nout2\n", "err\n")


async def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    outcome = await run_shell(r"printf '\377\376ok'; printf '\303' >&2", env=ENV, cwd=tmp_path)
    assert (outcome.stdout, outcome.stderr) == ("\ufffd\ufffdok", "\ufffd")


@pytest.mark.parametrize(
    ("cap", "kept", "truncated"),
    [(4, "6789", True), (10, "0123456789", False), (11, "0123456789", False), (0, "", True)],
)
async def test_cap_keeps_the_end(tmp_path: Path, cap: int, kept: str, truncated: bool) -> None:
    outcome = await run_shell("printf 0123456789", env=ENV, cwd=tmp_path, output_cap=cap)
    assert (outcome.stdout, outcome.stdout_truncated) == (kept, truncated)


async def test_cap_bounds_a_flood_and_keeps_its_tail(tmp_path: Path) -> None:
    command = "yes | head -c 50000000; printf END; yes e | head -c 3000000 >&2"
    outcome = await run_shell(command, env=ENV, cwd=tmp_path, output_cap=1000)
    assert len(outcome.stdout) == 1000
    assert outcome.stdout.endswith("y\ny\nEND")
    assert outcome.stdout_truncated
    assert outcome.stderr == "e\n" * 500
    assert outcome.stderr_truncated
    assert outcome.exit_code == 0


async def test_background_child_holding_stdout_neither_blocks_nor_survives(
    tmp_path: Path,
) -> None:
    start = time.monotonic()
    outcome = await run_shell("echo $$ > pgid; sleep 100 & echo hi", env=ENV, cwd=tmp_path)
    assert time.monotonic() - start < 1.5
    assert (outcome.exit_code, outcome.stdout, outcome.timed_out) == (0, "hi\n", False)
    await _assert_group_gone(int((tmp_path / "pgid").read_text()))


async def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    start = time.monotonic()
    outcome = await run_shell(GROUP, env=ENV, cwd=tmp_path, timeout=0.3, kill_grace=0.5)
    assert time.monotonic() - start < 1.2
    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    await _assert_group_gone(int((tmp_path / "pgid").read_text()))


async def test_timeout_keeps_the_output_so_far(tmp_path: Path) -> None:
    outcome = await run_shell("echo before; sleep 100", env=ENV, cwd=tmp_path, timeout=0.3)
    assert (outcome.stdout, outcome.timed_out) == ("before\n", True)


async def test_process_that_ends_on_term_is_not_kept_for_the_grace(tmp_path: Path) -> None:
    start = time.monotonic()
    outcome = await run_shell(["sleep", "100"], env=ENV, cwd=tmp_path, timeout=0.2, kill_grace=10)
    assert time.monotonic() - start < 2
    assert outcome.timed_out


async def test_process_ignoring_term_is_killed_after_the_grace(tmp_path: Path) -> None:
    command = 'trap "" TERM; echo $$ > pgid; sleep 100 & sleep 100'
    start = time.monotonic()
    outcome = await run_shell(command, env=ENV, cwd=tmp_path, timeout=0.2, kill_grace=0.4)
    elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 1.5
    assert (outcome.exit_code, outcome.timed_out) == (None, True)
    await _assert_group_gone(int((tmp_path / "pgid").read_text()))


@pytest.mark.parametrize("command", [GROUP, f'trap "" TERM; {GROUP}'], ids=["term", "trap-term"])
async def test_cancellation_kills_the_group_and_propagates(tmp_path: Path, command: str) -> None:
    seen: list[str] = []

    async def run() -> None:
        try:
            await run_shell(command, env=ENV, cwd=tmp_path, kill_grace=0.3)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise
        seen.append("returned")

    # A FIFO, so that reading the pid waits exactly until the command has started.
    os.mkfifo(tmp_path / "pgid")
    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(2):
            pid_text = await anyio.to_thread.run_sync(
                (tmp_path / "pgid").read_text, abandon_on_cancel=True
            )
        tg.cancel_scope.cancel()
    pgid = int(pid_text)
    assert seen == ["cancelled"]
    await _assert_group_gone(pgid)


@pytest.mark.parametrize(
    ("command", "cwd", "missing"),
    [(["/nonexistent/x"], ".", "/nonexistent/x"), ("true", "no-such-dir", "no-such-dir")],
)
async def test_command_that_cannot_start_raises_start_error(
    tmp_path: Path, command: list[str] | str, cwd: str, missing: str
) -> None:
    with pytest.raises(ShellStartError, match=r"^cannot start command: .*No such file") as info:
        await run_shell(command, env=ENV, cwd=tmp_path / cwd)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert missing in str(info.value)


def _pidfd_available() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


@pytest.mark.skipif(not _pidfd_available(), reason="needs pidfds (Linux 5.3+)")
async def test_children_are_waited_for_without_a_thread_each(tmp_path: Path) -> None:
    # Python 3.11's default watcher starts a thread per child (asyncio-waitpid-N); 3.12 uses pidfds.
    async with anyio.create_task_group() as group:
        outcomes: list[ShellOutcome] = []
        started: list[int] = []
        all_started = anyio.Event()

        def spawned(pgid: int, _: float | None) -> None:
            started.append(pgid)
            if len(started) == 4:
                all_started.set()

        async def one(code: int) -> None:
            outcomes.append(await run_shell(f"sleep 0.3; exit {code}", env=ENV, cwd=tmp_path, on_start=spawned))

        for code in range(4):
            group.start_soon(one, code)
        await all_started.wait()  # the four are being waited for now, each for 0.3 s
        waiting = [t.name for t in threading.enumerate() if "waitpid" in t.name]
        assert waiting == []
    assert sorted(o.exit_code for o in outcomes) == [0, 1, 2, 3]


async def test_the_group_reported_at_start_is_the_childs_with_the_start_time_proc_gives(tmp_path: Path) -> None:
    # What lets the next runner process tell the group of a dead one from a reused pid
    # (processes.kill_orphaned_group): read while each child lives, to compare.
    from runner.processes import process_start_time

    seen: list[tuple[int, float | None, float | None]] = []

    def started(pgid: int, at: float | None) -> None:
        seen.append((pgid, at, process_start_time(pgid)))

    for _ in range(20):  # some of them, most likely, started in one clock tick, some across two
        outcome = await run_shell("echo $$; sleep 0.05", env=ENV, cwd=tmp_path, on_start=started)
        assert int(outcome.stdout) == seen[-1][0]
    assert all(at is not None and at == proc for _, at, proc in seen), seen
