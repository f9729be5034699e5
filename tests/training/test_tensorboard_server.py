"""A real TensorBoard server, on loopback, shows what WeightNormMonitor wrote."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import TensorBoardLogger

from tests.fits import quiet_trainer
from wd_lightning import LinearRegression, SyntheticRegressionDataModule, WeightNormMonitor
from wd_lightning.training.tensorboard import read_scalars

HOST = "127.0.0.1"
RUN = "run/version_0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _get(port: int, path: str, **query: str):
    url = f"http://{HOST}:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait_for_tag(server: subprocess.Popen, port: int, tag: str, limit_s: float = 60) -> None:
    """Poll until the server answers and has loaded ``tag`` for the run (bounded)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"tensorboard exited with code {server.returncode}")
        try:
            if tag in _get(port, "/data/plugin/scalars/tags").get(RUN, {}):
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise AssertionError(f"tensorboard did not serve {tag!r} within {limit_s} s")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished fit's log directory and trainer."""
    root = tmp_path_factory.mktemp("logs")
    seed_everything(0, verbose=False)
    logger = TensorBoardLogger(root, name="run", version=0, default_hp_metric=False)
    trainer = quiet_trainer(
        max_epochs=3,
        log_every_n_steps=2,
        logger=logger,
        callbacks=[WeightNormMonitor(log_update_ratio=True)],
    )
    trainer.fit(LinearRegression(weight_decay=3.0), SyntheticRegressionDataModule())
    return root, logger.log_dir, trainer


@pytest.fixture(scope="module")
def server(finished_run):
    root, _, _ = finished_run
    port = _free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(root)]
    command += ["--host", HOST, "--port", str(port), "--load_fast=false", "--reload_interval=1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_tag(process, port, "weight_norm/decay")
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.parametrize(
    "tag", ["weight_norm/decay", "weight_norm/no_decay", "weight_norm/total", "update_ratio/decay"]
)
def test_served_scalars_are_the_event_file_values(finished_run, server, tag):
    _, log_dir, _ = finished_run
    served = _get(server, "/data/plugin/scalars/scalars", run=RUN, tag=tag)
    expected = read_scalars(log_dir)[tag]
    assert [(step, value) for _, step, value in served] == [
        (step, pytest.approx(value, rel=1e-6)) for step, value in expected
    ]
    if tag.startswith("weight_norm/"):
        assert [step for _, step, _ in served] == [1, 3, 5, 7, 9, 11, 12]


@pytest.mark.slow
def test_served_custom_scalars_layout_overlays_losses_and_group_norms(server):
    layout = _get(server, "/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
    assert charts["loss: train vs validation"] == [r"^train/loss$", r"^val/loss$"]
    assert charts["weight norm per group"] == [
        r"^weight_norm/decay$",
        r"^weight_norm/no_decay$",
        r"^weight_norm/total$",
    ]
    assert charts["update / weight ratio per group"][-1] == r"^update_ratio/total$"
    # The chart's regular expressions select the served tags.
    served = _get(
        server, "/data/plugin/custom_scalars/scalars", run=RUN, tag=r"^weight_norm/decay$"
    )
    assert served["regex_valid"] and list(served["tag_to_events"]) == ["weight_norm/decay"]


@pytest.mark.slow
def test_served_hparams_hold_hyperparameters_and_final_metrics(finished_run, server):
    _, log_dir, trainer = finished_run
    experiment = _get(
        server, "/data/plugin/hparams/experiment", request=json.dumps({"experimentName": ""})
    )
    metrics = sorted(m["name"]["tag"] for m in experiment["metricInfos"])
    assert metrics == ["train/loss", "val/loss", "val/mse", "weight_norm/total"]
    infos = experiment["hparamInfos"]
    assert {"weight_decay", "num_inputs", "batch_size", "lr", "optimizer"} <= {
        h["name"] for h in infos
    }
    # Served in this order, the first columns are the ones runs are compared by.
    assert [h["name"] for h in infos[:5]] == [
        "lr", "optimizer", "seed", "status", "weight_decay",
    ]  # fmt: skip
    request = {
        "experimentName": "",
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        "colParams": [{"hparam": "weight_decay"}, {"metric": {"tag": "weight_norm/total"}}],
        "startIndex": 0,
        "sliceSize": 10,
    }
    groups = _get(server, "/data/plugin/hparams/session_groups", request=json.dumps(request))
    (group,) = groups["sessionGroups"]
    assert group["hparams"]["weight_decay"] == 3.0 and group["hparams"]["optimizer"] == "SGD"
    values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
    assert values["weight_norm/total"] == pytest.approx(
        read_scalars(log_dir)["weight_norm/total"][-1][1]
    )
    assert values["val/loss"] == pytest.approx(trainer.callback_metrics["val/loss"].item())
