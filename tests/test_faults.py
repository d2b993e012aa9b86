"""Outputs survive faults: kill -9 mid-write, a full disk, four writers on one folder, SIGTERM.

Each test runs aggscope as a real process (``python -m aggscope``). To land a kill inside the
writing of a set of files, the process is started through a wrapper that slows every file write
down (``SLOW_WRITES``), and killed once its temporary shows up. The invariant after every fault:
the output is the previous one, whole, or the new one, whole; never a mix, never a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # real processes, killed and timed
REPO = Path(__file__).resolve().parents[1]
FAULTY = REPO / "sample_data" / "faulty.parquet"
SAMPLE = REPO / "sample_data" / "rollouts.parquet"
ENV = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"}
# Every file write of the process takes 0.3 s more: a kill can land between two files of a set.
SLOW_WRITES = textwrap.dedent(
    """
    import pathlib, sys, time
    real = pathlib.Path.write_bytes
    def slow(self, data):
        time.sleep(0.3)
        return real(self, data)
    pathlib.Path.write_bytes = slow
    from aggscope.cli import main
    sys.argv = ["aggscope", *sys.argv[1:]]
    main()
    """
)


def aggscope(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aggscope", *args], capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


def start(*args: str, slow: bool = False) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", SLOW_WRITES, *args] if slow else [sys.executable, "-m", "aggscope", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(predicate: object, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert process.poll() is None, f"finished before the fault: {process.communicate()}"
        assert time.monotonic() < deadline, "the moment to strike never came"
        time.sleep(0.02)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file in a folder, dot-names included (they would be litter)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aggscope: error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough tokens (about 2.6M) that writing the per-token weights takes a few seconds."""
    folder = tmp_path_factory.mktemp("big")
    done = aggscope("sample", str(folder), "--prompts", "128", "--steps", "8")
    assert done.returncode == 0, done.stderr
    return folder / "rollouts.parquet"


# ---- kill -9 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["weights", "convert"])
def test_kill_9_while_writing_a_file_leaves_the_previous_file_whole(command: str, big_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    flag = "--out" if command == "weights" else "-o"
    assert aggscope(command, str(FAULTY), flag, str(out)).returncode in (0, 1)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    process = start(command, str(big_input), flag, str(out))
    wait_for(lambda: temporaries(tmp_path), process)
    process.send_signal(signal.SIGKILL)  # the temporary is there: the new file is being written
    assert process.wait() == -signal.SIGKILL
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before  # the previous output, whole
    assert len(temporaries(tmp_path)) == 1  # SIGKILL leaves its temporary; no reader sees a dot-name
    assert aggscope(command, str(FAULTY), flag, str(out)).returncode == 0
    assert temporaries(tmp_path) == []  # the next write removed the dead writer's temporary
    pq.read_table(out)


def test_kill_9_during_report_never_leaves_a_mixed_set(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    done = aggscope("report", str(FAULTY), "--mini-batch-size", "10", "-o", str(out))
    assert done.returncode == 0, done.stderr
    previous = digest(out)
    for files_written in (1, 3, 6):  # kill after 1, 3 and 6 files of the new set are in its temporary folder
        process = start("report", str(SAMPLE), "-m", "token_mean", "-m", "sequence_mean", "-o", str(out), slow=True)

        def enough(n: int = files_written) -> bool:
            return any(len(list(t.iterdir())) >= n for t in temporaries(tmp_path) if t.is_dir())

        wait_for(enough, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert digest(out) == previous  # the previous report, whole: no file of the new one beside it
    done = aggscope("report", str(SAMPLE), "-m", "token_mean", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert temporaries(tmp_path) == []
    document = json.loads((out / "report.json").read_text())
    assert document["input"]["source"] == str(SAMPLE) and set(digest(out)) == {
        "report.json",
        "report.md",
        "report.html",
        *document["figures"].values(),
    }


def test_kill_9_during_plot_never_leaves_a_mixed_set(tmp_path: Path) -> None:
    out = tmp_path / "figures"
    assert aggscope("plot", str(FAULTY), "-o", str(out), "--figure", "steps").returncode == 0
    previous = digest(out)
    process = start("plot", str(SAMPLE), "-o", str(out), slow=True)
    wait_for(lambda: any(len(list(t.iterdir())) >= 2 for t in temporaries(tmp_path) if t.is_dir()), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert digest(out) == previous


LOG_LOOP = textwrap.dedent(
    """
    import sys, torch, aggscope
    B, L = 512, 2048
    for step in range(1000):
        aggscope.log_batch(sys.argv[1], step=step, uids=[f"p{i // 8}" for i in range(B)],
                           advantages=torch.randn(B, L), loss_mask=torch.ones(B, L, dtype=torch.bool))
        aggscope.flush_batch_logs()
    """
)


def test_kill_9_during_log_batch_leaves_only_whole_files(tmp_path: Path) -> None:
    folder = tmp_path / "batches"
    process = subprocess.Popen([sys.executable, "-c", LOG_LOOP, str(folder)], env=ENV, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: folder.exists() and len(list(folder.glob("step_*.parquet"))) >= 2 and temporaries(folder), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    whole = sorted(folder.glob("step_*.parquet"))
    assert whole and temporaries(folder)  # the one being written was a dot-name
    for path in whole:
        assert pq.read_metadata(path).num_rows == 512
    done = aggscope("inspect", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["steps"]) == len(whole)


# ---- SIGTERM and SIGHUP ------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_term_and_hup_remove_the_temporary(signum: int, big_input: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.parquet"
    process = start("weights", str(big_input), "--out", str(out))
    wait_for(lambda: temporaries(tmp_path), process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert err.strip() == f"aggscope: stopped by {signal.Signals(signum).name}; no partial output was left"
    assert list(tmp_path.iterdir()) == []


def test_term_ends_a_process_stuck_in_c_code(tmp_path: Path) -> None:
    """A read that never returns (a FIFO opened by pyarrow, standing in for a stalled file system)."""
    fifo = tmp_path / "x.jsonl"
    os.mkfifo(fifo)  # opening it for reading blocks inside pyarrow's C++ until a writer comes: none will
    script = textwrap.dedent(
        """
        import sys, pyarrow.json as j
        from aggscope.cli.signals import stop_cleanly_on_signals
        with stop_cleanly_on_signals():
            j.read_json(sys.argv[1])
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script, str(fifo)], env=ENV, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err


# ---- a full disk, a read-only mount --------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (each test fills it up after writing its first output)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root and mount rights")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the disk up to ``leave`` free bytes."""
    stats = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))


def test_full_disk_is_one_line_and_keeps_the_previous_output(small_disk: Path, big_input: Path) -> None:
    out = small_disk / "w.parquet"
    assert aggscope("weights", str(FAULTY), "--out", str(out)).returncode in (0, 1)
    before = hashlib.sha256(out.read_bytes()).hexdigest()
    fill(small_disk, 100_000)  # the per-token weights of big_input take about 600 kB
    message = one_error_line(aggscope("weights", str(big_input), "--out", str(out)))
    assert message == f"aggscope: error: {out}: cannot write it: No space left on device"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == before and temporaries(small_disk) == []


def test_full_disk_during_report_keeps_the_previous_report(small_disk: Path) -> None:
    out = small_disk / "rep"
    done = aggscope("report", str(FAULTY), "-m", "token_mean", "-o", str(out))
    assert done.returncode == 0, done.stderr
    previous = digest(out)
    fill(small_disk, 200_000)  # less than a report
    message = one_error_line(aggscope("report", str(SAMPLE), "-m", "token_mean", "-o", str(out)))
    assert message == f"aggscope: error: {out}: cannot write it: No space left on device"
    assert digest(out) == previous and temporaries(small_disk) == []


def test_read_only_mount_is_one_line(small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args, target in (
        (["weights", str(FAULTY), "--out", str(small_disk / "w.parquet")], small_disk / "w.parquet"),
        (["convert", str(FAULTY), "-o", str(small_disk / "c.parquet")], small_disk / "c.parquet"),
        (["report", str(FAULTY), "-o", str(small_disk / "rep")], small_disk / "rep"),
    ):
        message = one_error_line(aggscope(*args))
        assert message.startswith(f"aggscope: error: {target}") and "Read-only file system" in message, message


# ---- four writers, one folder ---------------------------------------------------------------------------
def test_four_concurrent_reports_leave_one_complete_consistent_report(tmp_path: Path) -> None:
    layouts = [["--mini-batch-size", str(size)] for size in (4, 8, 16, 32)]
    references = []
    for index, layout in enumerate(layouts):  # what each run writes alone
        done = aggscope(
            "report", str(FAULTY), "-m", "token_mean", "-m", "prompt_mean", *layout, "-o", str(tmp_path / f"ref{index}")
        )
        assert done.returncode == 0, done.stderr
        references.append(digest(tmp_path / f"ref{index}"))
    out = tmp_path / "shared"
    processes = [
        start("report", str(FAULTY), "-m", "token_mean", "-m", "prompt_mean", *layout, "-o", str(out)) for layout in layouts
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert digest(out) in references  # exactly one writer's whole set, byte for byte
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- a storage that never answers ------------------------------------------------------------------------
def test_a_storage_that_never_answers_is_one_line_within_the_bound(tmp_path: Path) -> None:
    """A local server that accepts connections and never replies, standing in for object storage
    with no network (only 127.0.0.1 is contacted: credentials and region are given, the instance
    metadata service is switched off)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # the accept timed out: look at the stop flag again
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = {
        **ENV,
        "AGGSCOPE_CONNECT_TIMEOUT": "3",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    uri = f"s3://bucket/run/?endpoint_override=127.0.0.1:{server.getsockname()[1]}&scheme=http"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "aggscope", "weights", uri], capture_output=True, text=True, env=env, timeout=60, check=False
        )
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        server.close()
    assert time.monotonic() - started < 30
    assert one_error_line(done) == (
        f"aggscope: error: {uri}: no answer from the storage within 3 s (no network, a wrong endpoint or bucket?); "
        "set AGGSCOPE_CONNECT_TIMEOUT=SECONDS to wait longer"
    )
