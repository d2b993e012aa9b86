"""Figures encoded in forked processes: the bytes of the plain loop, in order, whatever a child does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aggscope.analysis.breakdown import run_breakdown
from aggscope.analysis.specs import parse_spec
from aggscope.core.layout import Layout
from aggscope.io.open import load_steps
from aggscope.present import figures as figures_module
from aggscope.present import forked
from aggscope.present.figure_set import DRAWING_COST, drawing_standby, encode_figures, make_figures
from aggscope.present.figures import FIGURES, figure_bytes

needs_fork = pytest.mark.skipif(not forked.can_fork(), reason="forking needs POSIX, two cores and no other thread")


def _pid_and_square(n: int) -> bytes:
    time.sleep(0.1)  # long enough that the child, forked in a millisecond, takes some of the jobs
    return f"{os.getpid()} {n * n}".encode()


@needs_fork
def test_forked_map_keeps_order_and_uses_children() -> None:
    results = forked.forked_map(_pid_and_square, list(range(12)), workers=2)
    assert [int(r.split()[1]) for r in results] == [n * n for n in range(12)]
    assert len({int(r.split()[0]) for r in results}) == 2  # this process and one child shared the jobs
    assert not forked.forked_map(_pid_and_square, [])


def _fails_in_children(n: int) -> bytes:
    if os.getpid() != PARENT:
        raise RuntimeError("a child's encoder failed")
    return str(n).encode()


PARENT = os.getpid()


@needs_fork
def test_jobs_of_a_failed_child_are_done_here() -> None:
    assert forked.forked_map(_fails_in_children, list(range(6)), workers=2) == [str(n).encode() for n in range(6)]


def test_plain_loop_where_forking_is_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    results = forked.forked_map(_pid_and_square, [1, 2, 3], workers=2)
    assert {int(r.split()[0]) for r in results} == {os.getpid()}


def test_encoded_figures_are_the_plain_encoding() -> None:
    breakdown = run_breakdown(load_steps()[:2], [parse_spec(name, Layout()) for name in ("token_mean", "sequence_mean")])
    # A figure encoded twice need not give the same bytes (a layout pass moves things): compare first encodings.
    plain = {name: figure_bytes(figure) for name, figure in make_figures(breakdown).items()}
    encoded = encode_figures(make_figures(breakdown))
    assert encoded == plain
    assert list(encoded) == list(plain)  # in the figures' order, whatever order they were drawn in


def test_every_figure_has_a_drawing_cost() -> None:
    assert set(DRAWING_COST) == set(FIGURES)


@needs_fork
def test_meanwhile_runs_here_while_children_take_jobs() -> None:
    seen: list[int] = []

    def meanwhile() -> None:
        time.sleep(0.5)  # the child takes jobs while this process sleeps
        seen.append(os.getpid())

    results = forked.forked_map(_pid_and_square, list(range(6)), workers=2, meanwhile=meanwhile)
    assert seen == [os.getpid()]
    assert [int(r.split()[1]) for r in results] == [n * n for n in range(6)]
    pids = [int(r.split()[0]) for r in results]
    assert pids[0] != os.getpid()  # the first job went to the child while this process was busy


@needs_fork
def test_a_failing_meanwhile_stops_the_children() -> None:
    def meanwhile() -> None:
        raise RuntimeError("the texts failed")

    with pytest.raises(RuntimeError, match="the texts failed"):
        forked.forked_map(_pid_and_square, list(range(6)), workers=2, meanwhile=meanwhile)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # every child was reaped: none is left running or a zombie


class _Interrupted(Exception):
    pass


def _slow_in_the_child(parent: int) -> Callable[[int], bytes]:
    def encode(n: int) -> bytes:
        time.sleep(5.0 if os.getpid() != parent else 0.3)  # this process takes a job and waits for the child
        return b"x"

    return encode


@needs_fork
def test_a_signal_while_collecting_stops_the_children() -> None:
    """Interrupted while it waits for a child's results, this process kills and reaps the child
    rather than leaving it encoding after the process has gone."""

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    start = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        with pytest.raises(_Interrupted):
            forked.forked_map(_slow_in_the_child(os.getpid()), [1, 2], workers=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 4.0  # the child's 5 s job was not waited for
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child is left running or a zombie


def test_meanwhile_first_in_the_plain_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    order: list[str] = []
    forked.forked_map(lambda n: order.append(f"job {n}") or b"", [1, 2], workers=2, meanwhile=lambda: order.append("meanwhile"))
    assert order == ["meanwhile", "job 1", "job 2"]


def test_figures_are_built_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    breakdown = run_breakdown(load_steps()[:2], [parse_spec("token_mean", Layout())])
    built: list[str] = []
    builders = {name: (lambda b, n=name, f=f: built.append(n) or f(b)) for name, f in figures_module.FIGURES.items()}
    monkeypatch.setattr(figures_module, "FIGURES", builders)
    figures = make_figures(breakdown)
    assert list(figures) == [
        "weight_distribution",
        "mass_vs_length",
        "prompt_concentration",
        "split_map",
        "zero_grad_causes",
        "steps",
    ]
    assert not built
    assert figures["split_map"] is figures["split_map"]
    assert built == ["split_map"]
    with pytest.raises(KeyError):
        figures["nope"]


def _signal_state(n: int) -> bytes:
    time.sleep(0.1)
    return f"{os.getpid()} {signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}".encode()


@needs_fork
def test_forks_beside_the_signal_watcher_and_children_leave_signals_to_it() -> None:
    """The command line's signal watcher (a thread blocked on a pipe) does not stop the forking, and
    a child ends at once on SIGTERM instead of raising into its jobs or waking the parent's watcher."""
    from aggscope.cli.signals import stop_cleanly_on_signals

    with stop_cleanly_on_signals():
        assert forked.can_fork()
        results = forked.forked_map(_signal_state, list(range(6)), workers=2)
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # this process keeps its handler
    children = [r.split() for r in results if int(r.split()[0]) != os.getpid()]
    assert children and all(state == b"True" for _, state in children)


# ---- a child forked early (Standby) ----------------------------------------------------------------
def _pid_and_double(n: int) -> tuple[int, int]:
    return os.getpid(), 2 * n


def _fails(n: int) -> int:
    raise RuntimeError("the job failed")


def _prepare_fails() -> None:
    raise ImportError("no such module")


@needs_fork
def test_a_standby_does_its_job_in_the_child() -> None:
    ran = []
    with forked.Standby(lambda: None) as standby:
        result = standby.call(_pid_and_double, 21, meanwhile=lambda: ran.append(os.getpid()))
    assert result is not None and result[1] == 42 and result[0] != os.getpid()
    assert ran == [os.getpid()]
    # a job bigger than a pipe holds goes there and back whole
    with forked.Standby(lambda: None) as standby:
        assert standby.call(bytes.upper, b"x" * (1 << 20)) == b"X" * (1 << 20)


@needs_fork
@pytest.mark.parametrize(("prepare", "work"), [(_prepare_fails, _pid_and_double), (lambda: None, _fails)])
def test_a_standby_that_fails_gives_none(prepare: Callable[[], None], work: Callable[[int], object]) -> None:
    ran = []
    with forked.Standby(prepare) as standby:
        assert standby.call(work, 1, meanwhile=lambda: ran.append(1)) is None
    assert ran == [1]  # meanwhile ran all the same, once


@needs_fork
def test_a_standby_never_called_is_ended_and_reaped() -> None:
    standby = forked.Standby(lambda: time.sleep(30))
    pid = standby._pid
    assert pid is not None
    standby.close()
    with pytest.raises(ChildProcessError):  # reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)
    assert standby.call(_pid_and_double, 1) is None


def test_no_standby_where_forking_is_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    ran = []
    with forked.Standby(lambda: None) as standby:
        assert standby.call(_pid_and_double, 1, meanwhile=lambda: ran.append(1)) is None
    assert ran == [1]


@needs_fork
def test_figures_drawn_in_the_standby_are_the_same_bytes() -> None:
    breakdown = run_breakdown(load_steps()[:3], [parse_spec(name, Layout()) for name in ("token_mean", "prompt_mean")])
    plain = {name: figure_bytes(figure) for name, figure in make_figures(breakdown).items()}
    with drawing_standby() as standby, pytest.MonkeyPatch.context() as patch:
        assert standby._pid is not None  # the child is there: the figures are drawn in it
        patch.setattr(figures_module, "figure_bytes", _not_here)  # in this process only: the child was forked before
        drawn = encode_figures(make_figures(breakdown), standby=standby)
    assert drawn == plain and list(drawn) == list(plain)


def _not_here(*args: object) -> bytes:
    raise AssertionError("drawn in this process, not in the standby")


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("failing", ["pipe", "fork"])
def test_a_standby_that_cannot_be_forked_leaves_the_job_here(failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forked, "can_fork", lambda: True)
    real_pipe, pipes = os.pipe, []

    def second_pipe_fails() -> tuple[int, int]:
        pipes.append(1)
        if len(pipes) == 2:
            raise OSError(24, "Too many open files")
        return real_pipe()

    def fork_fails() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    before = _open_descriptors()
    if failing == "pipe":
        monkeypatch.setattr(forked.os, "pipe", second_pipe_fails)
    else:
        monkeypatch.setattr(forked.os, "fork", fork_fails)
    ran = []
    with forked.Standby(lambda: None) as standby:
        assert standby.call(_pid_and_double, 1, meanwhile=lambda: ran.append(1)) is None
    assert ran == [1] and _open_descriptors() == before


@needs_fork
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_a_job_that_cannot_be_pickled_is_left_here_and_the_child_reaped() -> None:
    before = _open_descriptors()
    ran = []
    standby = forked.Standby(lambda: None)
    pid = standby._pid
    assert pid is not None
    assert standby.call(_pid_and_double, lambda: 1, meanwhile=lambda: ran.append(1)) is None
    assert ran == [1] and _open_descriptors() == before
    with pytest.raises(ChildProcessError):  # reaped: no zombie left
        os.waitpid(pid, os.WNOHANG)


STANDBY_WITH_WORKERS = """
import os, sys, time
from aggscope.cli.signals import stop_cleanly_on_signals
from aggscope.present import forked

def sleep_and_record(n):
    open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
    time.sleep(60)
    return b""

def work(n):
    return forked.forked_map(sleep_and_record, list(range(n)), workers=n)

with stop_cleanly_on_signals(), forked.Standby(lambda: None) as standby:
    standby.call(work, 2)
"""


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@needs_fork
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states in /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_command_alone_ends_the_standby_and_its_workers(signum: int, tmp_path: Path) -> None:
    """Only the command is signalled (not its process group, as Ctrl-C would): the standby and the
    workers it forked to draw must end with it, not run on as orphans."""
    process = subprocess.Popen([sys.executable, "-c", STANDBY_WITH_WORKERS, str(tmp_path)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.iterdir())) < 2:  # the standby's worker and the standby itself each took a job
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)
    workers = [int(p.name) for p in tmp_path.iterdir()]
    process.send_signal(signum)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [pid for pid in workers if _running(pid)]
