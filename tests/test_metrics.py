"""MetricWriter output files (JSONL + TensorBoard events), console line, host-0 rule, NaN guard."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from cavmae_jax.train import metrics


def _read_events(path) -> list:
    """Parses a TFRecord-framed TensorBoard event file: [len u64][crc u32][data][crc u32]."""
    events, data = [], path.read_bytes()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + length])
        events.append(event)
        pos += 12 + length + 4
    return events


def test_writer_writes_jsonl_tensorboard_and_console(tmp_path, capsys):
    with metrics.MetricWriter(tmp_path, total_steps=100) as writer:
        writer.write_config({"optim": {"lr": 1e-4}, "batch_size": 8})
        writer.start_timer(0)
        writer.write(
            10, {"loss": jnp.float32(1.5), "loss_c": np.float32(0.25), "lr": 1e-4}, num_examples=80
        )
        writer.write(20, {"loss": 1.25, "loss_c": 0.125, "lr": 5e-5}, num_examples=80)
        writer.write(20, {"eval/r1": 12.5}, console=False)

    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 20]
    assert lines[0]["loss"] == 1.5 and lines[1]["loss_c"] == 0.125 and lines[1]["lr"] == 5e-5
    assert lines[1]["examples_per_sec"] > 0 and lines[1]["eta_s"] >= 0
    assert lines[2] == {"step": 20, "eval/r1": 12.5}
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 1e-4

    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    scalars = {
        (v.tag, e.step): v.simple_value
        for e in _read_events(event_files[0])
        for v in e.summary.value
    }
    assert scalars[("loss", 10)] == 1.5
    assert scalars[("loss_c", 20)] == 0.125
    assert scalars[("eval/r1", 20)] == 12.5

    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2  # console=False for the eval write
    assert out[1].startswith("step 20/100 | loss 1.25 loss_c 0.125 | lr 5.00e-05 | ")
    assert " ex/s | ETA " in out[1]


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    writer = metrics.MetricWriter(tmp_path / "w", total_steps=10)
    out = writer.write(1, {"loss": 1.0})
    writer.close()
    assert out == {"loss": 1.0}
    assert not (tmp_path / "w").exists()


def test_check_finite_names_step_and_loss_part():
    metrics.check_finite({"loss": jnp.float32(1.0), "loss_mae": 0.5, "count": 3}, step=5)
    with pytest.raises(FloatingPointError, match=r"step 7: loss=nan, loss_c=inf") as err:
        metrics.check_finite(
            {"loss": jnp.float32(np.nan), "loss_mae": jnp.float32(0.3), "loss_c": np.inf}, step=7
        )
    assert "loss_mae" not in str(err.value)


def test_nonfinite_values_still_produce_valid_json(tmp_path):
    with metrics.MetricWriter(tmp_path, total_steps=10) as writer:
        writer.write(1, {"loss": float("nan")}, console=False)
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": "nan"}
