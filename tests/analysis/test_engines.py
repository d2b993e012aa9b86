"""Engines: the Ray engine gives the local engine's numbers exactly; object storage (s3://) reads
the same as local files. Ray runs locally with 2 CPUs, S3 is moto's server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_streaming import rollout_table, write_split
from typer.testing import CliRunner

from aggscope.analysis.runner import Engine, open_engine
from aggscope.analysis.weights import run_weights
from aggscope.cli import app
from aggscope.core.layout import Layout
from aggscope.core.weights import select_modes
from aggscope.errors import AggscopeError
from aggscope.io.open import open_rollouts

pytestmark = pytest.mark.slow  # end to end: a local Ray cluster and moto's S3 server

REPO = Path(__file__).resolve().parents[2]
LAYOUTS = [Layout(), Layout(mini_batch_size=17, micro_batch_size=4, dp_size=2, max_seq_len=64), Layout(order="shuffle", seed=3)]


@pytest.fixture(scope="module")
def aws_credentials() -> Iterator[None]:
    """Dummy credentials for the local S3 server, set before Ray starts so its workers have them too."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ray_cluster(aws_credentials: None) -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # Workers inherit the environment: make them import this checkout's aggscope.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), saved) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved


def report_on(engine: Engine, path: str, layout: Layout) -> dict[str, Any]:
    rollouts = open_rollouts(path)
    modes = select_modes(None, has_groups=rollouts.has_groups, layout=layout)
    return run_weights(rollouts, modes, layout, engine=engine).to_dict()


@pytest.fixture(scope="module")
def split_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five steps over three files of several row groups each."""
    return write_split(rollout_table(seed=11, steps=5, rows=80), tmp_path_factory.mktemp("input") / "run", 3, 23)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["default", "split", "shuffle"])
def test_ray_engine_equals_the_local_engine(ray_cluster: Any, split_input: Path, layout: Layout) -> None:
    local = report_on(Engine(), str(split_input), layout)
    rollouts = open_rollouts(str(split_input))
    modes = select_modes(None, has_groups=True, layout=layout)
    assert run_weights(rollouts.iter_steps(), modes, layout).to_dict() == local
    for in_flight in (1, None):  # one task at a time, or many at once: results merge in step order
        distributed = report_on(Engine("ray", max_in_flight=in_flight), str(split_input), layout)
        assert distributed == local  # counts exactly, and floats too (the same sums in the same order)


def test_ray_tasks_do_not_depend_on_how_steps_are_split_into_files(ray_cluster: Any, tmp_path: Path) -> None:
    table = rollout_table(seed=12, steps=4, rows=50)
    one = tmp_path / "one.parquet"
    pq.write_table(table, one)
    many = write_split(table, tmp_path / "many", 4, 7)
    assert report_on(Engine("ray"), str(many), Layout()) == report_on(Engine(), str(one), Layout())


def test_an_input_error_inside_a_ray_task_is_one_line_and_exit_2(ray_cluster: Any, tmp_path: Path) -> None:
    table = rollout_table(seed=13, steps=3, rows=20)
    mask = table.column("loss_mask").combine_chunks()
    offsets = mask.offsets.to_numpy()
    row = next(r for r in range(40, 60) if offsets[r + 1] - offsets[r] >= 2)  # a row of step 2 with 2+ tokens
    values = mask.values.to_numpy().copy()
    values[offsets[row] + 1] = 3
    broken = table.set_column(
        table.column_names.index("loss_mask"), "loss_mask", pa.ListArray.from_arrays(mask.offsets, pa.array(values))
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(broken, path)
    result = CliRunner().invoke(app, ["weights", str(path), "--engine", "ray"])
    assert result.exit_code == 2, result.output
    assert (
        result.output
        == f"aggscope: error: {path}: row {row}: column 'loss_mask' holds 3 at token 1; a loss mask may hold only 0 and 1\n"
    )


def test_cli_ray_engine_json_equals_local(ray_cluster: Any, split_input: Path) -> None:
    runner = CliRunner()
    local = runner.invoke(app, ["weights", str(split_input), "--json", "--mini-batch-size", "16"])
    distributed = runner.invoke(app, ["weights", str(split_input), "--json", "--mini-batch-size", "16", "--engine", "ray"])
    assert local.exit_code == 0 and distributed.exit_code == 0, distributed.output
    assert json.loads(distributed.stdout) == json.loads(local.stdout)


def test_ray_engine_refuses_per_token_output(ray_cluster: Any, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["weights", "--engine", "ray", "--out", str(tmp_path / "w.parquet")])
    assert result.exit_code == 2
    assert "--out is written by the local engine; drop --engine ray" in result.output
    assert not (tmp_path / "w.parquet").exists()


def test_without_ray_the_option_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = CliRunner().invoke(app, ["weights", "--engine", "ray"])
    assert result.exit_code == 2
    assert result.output == "aggscope: error: --engine ray needs Ray, which is not installed: pip install 'aggscope[ray]'\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "spark"], "unknown engine 'spark'; engines: local, ray (--engine)"),
        (["--address", "auto"], "--address is the Ray cluster's address: give it with --engine ray"),
    ],
)
def test_engine_option_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["weights", *args])
    assert result.exit_code == 2
    assert result.output == f"aggscope: error: {message}\n"


def test_open_engine_checks_names() -> None:
    assert open_engine("local") == Engine()
    with pytest.raises(AggscopeError, match="unknown engine"):
        open_engine("dask")


# ---- object storage --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_server(aws_credentials: None) -> Iterator[str]:
    """A local S3-compatible server (moto) on 127.0.0.1; yields the endpoint 'host:port'."""
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    client.create_bucket(Bucket="runs")
    yield endpoint
    server.stop()


def upload(endpoint: str, local_dir: Path, prefix: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    for file in sorted(local_dir.glob("*.parquet")):
        client.upload_file(str(file), "runs", f"{prefix}/{file.name}")
    return f"s3://runs/{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


def test_s3_input_reads_like_the_local_files(s3_server: str, split_input: Path) -> None:
    uri = upload(s3_server, split_input, "exp1")
    runner = CliRunner()
    remote = runner.invoke(app, ["weights", uri, "--json"])
    local = runner.invoke(app, ["weights", str(split_input), "--json"])
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    described = runner.invoke(app, ["inspect", uri, "--json"])
    assert described.exit_code == 0, described.output
    assert [Path(f).name for f in json.loads(described.stdout)["files"]] == ["part00.parquet", "part01.parquet", "part02.parquet"]


def test_s3_input_on_ray_workers(ray_cluster: Any, s3_server: str, split_input: Path) -> None:
    uri = upload(s3_server, split_input, "exp2")
    assert report_on(Engine("ray"), uri, Layout()) == report_on(Engine(), str(split_input), Layout())


def test_a_missing_s3_prefix_is_one_line(s3_server: str) -> None:
    result = CliRunner().invoke(app, ["weights", f"s3://runs/nothing-here?endpoint_override={s3_server}&scheme=http"])
    assert result.exit_code == 2
    assert "s3://runs/nothing-here" in result.output and "no such file or directory" in result.output


def test_check_on_ray_equals_local(ray_cluster: Any) -> None:
    """Findings, counts and the split picture of `check` are the same from Ray tasks."""
    faulty = str(REPO / "sample_data" / "faulty.parquet")
    runner = CliRunner()
    args = ["check", faulty, "--mini-batch-size", "10", "--json", "--fail-on", "never"]
    local = runner.invoke(app, args)
    distributed = runner.invoke(app, [*args, "--engine", "ray"])
    assert local.exit_code == 0 and distributed.exit_code == 0, distributed.output
    report = json.loads(distributed.stdout)
    assert report == json.loads(local.stdout)
    assert report["findings"], "the faulty sample should give findings to compare"


def test_report_and_compare_on_ray_equal_local(ray_cluster: Any, split_input: Path, tmp_path: Path) -> None:
    """`report` and `compare` from Ray tasks write the same report.json as the local engine."""
    runner = CliRunner()
    jobs = {
        "report": ["report", str(split_input), "--mini-batch-size", "17", "--micro-batch-size", "4"],
        "compare": ["compare", str(split_input), "--from", "token_mean", "--to", "prompt_mean,mini-batch-prompts=3"],
    }
    for name, args in jobs.items():
        documents = []
        for engine in ("local", "ray"):
            out = tmp_path / f"{name}-{engine}"
            result = runner.invoke(app, [*args, "-o", str(out), "--engine", engine])
            assert result.exit_code == 0, result.output
            documents.append(json.loads((out / "report.json").read_text()))
        assert documents[0] == documents[1]
        assert documents[0]["input"]["steps"] == [0, 1, 2, 3, 4]


def test_breakdown_merged_from_ray_parts_equals_local(ray_cluster: Any, split_input: Path) -> None:
    """Per-row weights, histograms and splits of the breakdown are the same from Ray tasks."""

    from aggscope.analysis.breakdown import run_breakdown
    from aggscope.analysis.specs import parse_specs

    specs = parse_specs("seq-mean-token-mean", ["prompt_mean,mini-batch-prompts=4", "token_mean"], Layout(dp_size=2))
    local = run_breakdown(open_rollouts(str(split_input)), specs, engine=Engine())
    distributed = run_breakdown(open_rollouts(str(split_input)), specs, engine=Engine("ray"))
    for label in local.labels:
        assert np.array_equal(local.results[label].row_weight, distributed.results[label].row_weight)
        assert (local.results[label].histogram.positive == distributed.results[label].histogram.positive).all()
    # check's reports compare by identity: compare what they say.
    assert {layout: report.to_dict() for layout, report in local.checks.items()} == {
        layout: report.to_dict() for layout, report in distributed.checks.items()
    }
    assert local.worst_step_index() == distributed.worst_step_index()
    assert local.cut_prompts == distributed.cut_prompts
    assert np.array_equal(local.stats.adv_abs_sum, distributed.stats.adv_abs_sum)
