"""Nothing executes from a file: every file a user can pass is read by an unpickler that builds
tensors, arrays and plain values only. What this project writes still loads."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from l2o_pipeline.checkpoint import (
    OPTIMIZER_FORMAT,
    STATE_FORMAT,
    CheckpointError,
    load_file,
    load_optimizer,
    resolve_checkpoint,
)
from l2o_pipeline.errors import DatasetNotFoundError
from l2o_pipeline.meta import MetaTrainSettings, meta_train
from l2o_pipeline.optimizees import QuadraticTask
from l2o_pipeline.optimizers import RNNprop
from l2o_pipeline.torch_optim import LearnedOptimizer


class Payload:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_payload_checkpoint(path: Path, marker_dir: Path, kind: str = "torch",
                             fmt: str = OPTIMIZER_FORMAT) -> Path:
    """A "checkpoint" whose loading with a plain unpickler creates ``marker_dir/pwned_<name>``
    (returned). ``kind``: torch (torch.save's zip), legacy (torch.save's old format), raw
    (pickle.dump)."""
    marker = marker_dir / f"pwned_{path.name}"
    obj = {"format": fmt, "class": "rnnprop", "payload": Payload(f"touch {marker}")}
    if kind == "raw":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind == "torch")
    return marker


KINDS = ("torch", "legacy", "raw")


@pytest.mark.parametrize("kind", KINDS)
def test_the_payload_would_run_with_a_plain_unpickler(tmp_path, kind):
    """The files the tests below refuse really are dangerous."""
    marker = write_payload_checkpoint(tmp_path / "evil.pt", tmp_path, kind)
    with open(tmp_path / "evil.pt", "rb") as f:
        if kind == "raw":
            pickle.load(f)
        else:
            torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_load_optimizer_refuses_a_payload_without_running_it(tmp_path, kind):
    path = tmp_path / "evil.pt"
    marker = write_payload_checkpoint(path, tmp_path, kind)
    with pytest.raises(CheckpointError, match="not a checkpoint this project wrote") as info:
        load_optimizer(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_learned_optimizer_refuses_a_payload_checkpoint(tmp_path):
    path = tmp_path / "evil.pt"
    marker = write_payload_checkpoint(path, tmp_path)
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(CheckpointError, match="not a checkpoint this project wrote"):
        LearnedOptimizer(params, checkpoint=path)
    run = tmp_path / "run"
    run.mkdir()
    in_run = write_payload_checkpoint(run / "best.pt", tmp_path)
    with pytest.raises(CheckpointError, match="not a checkpoint this project wrote"):
        LearnedOptimizer(params, checkpoint=run)  # a run folder: its best.pt
    assert not marker.exists() and not in_run.exists()


def small_settings(n_iterations: int) -> MetaTrainSettings:
    return MetaTrainSettings(n_iterations=n_iterations, steps_per_run=8, unroll=4, meta_lr=1e-3,
                             checkpoint_every=2, state_every=1, log_every=1)


def test_meta_training_resume_refuses_a_payload_state(tmp_path, caplog):
    from l2o_pipeline.meta import load_training_state

    marker = write_payload_checkpoint(tmp_path / "state.pt", tmp_path, fmt=STATE_FORMAT)
    with caplog.at_level(logging.WARNING):
        assert load_training_state(tmp_path) is None  # what the pipeline resumes from
        result = meta_train(RNNprop(), QuadraticTask(dim=4, n_problems=4), small_settings(2),
                            tmp_path, seed=0, progress=False)
    assert not marker.exists()
    assert f"ignoring unusable training state {tmp_path / 'state.pt'}" in caplog.text
    assert "restarts from iteration 0" in caplog.text  # the payload was moved aside, loudly
    assert result.iterations == 2


def test_packaged_optimizer_loads_with_weights_only():
    path = resolve_checkpoint("rnnprop-mnist")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    model, payload = load_optimizer(path, expected_class="rnnprop")
    assert payload["hparams"] == raw["hparams"] and payload["iteration"] == raw["iteration"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, raw["state_dict"][key])
    LearnedOptimizer([torch.nn.Parameter(torch.zeros(3))])  # its default checkpoint


def test_meta_training_state_and_checkpoints_round_trip(tmp_path, caplog):
    """A fresh state.pt (model, Adam, generator, progress, settings, config) and the optimizer
    checkpoints load with weights_only, and training resumes from the state."""
    config = {"seed": 0, "optimizer": {"name": "rnnprop"}, "eval_steps": [10, 20]}
    meta_train(RNNprop(), QuadraticTask(dim=4, n_problems=4), small_settings(2), tmp_path,
               seed=0, config=config, progress=False)
    state = load_file(tmp_path / "state.pt", STATE_FORMAT)
    assert state["progress"]["iteration"] == 2 and state["config"] == config
    assert isinstance(state["generator"], torch.Tensor)
    for name in ("best.pt", "final.pt", "checkpoints/iter_0000002.pt"):
        load_optimizer(tmp_path / name, expected_class="rnnprop")
    with caplog.at_level(logging.INFO):
        result = meta_train(RNNprop(), QuadraticTask(dim=4, n_problems=4), small_settings(3),
                            tmp_path, seed=0, config=config, progress=False)
    assert "resumed meta-training at iteration 2" in caplog.text and result.iterations == 3


def test_cifar10_batches_cannot_run_code(tmp_path):
    from l2o_pipeline.data import load_cifar10, write_fake_cifar10

    root = write_fake_cifar10(tmp_path / "data", n=20)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    marker = tmp_path / "pwned_cifar"
    real = pickle.loads(batch.read_bytes())
    batch.write_bytes(pickle.dumps({**real, "payload": Payload(f"touch {marker}")}, protocol=2))
    refusal = "data_batch_2 is not a CIFAR-10 batch .*system is not allowed"
    with pytest.raises(DatasetNotFoundError, match=refusal):
        load_cifar10(root)
    assert not marker.exists()
