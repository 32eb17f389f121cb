"""A researcher's whole path through the CLIs: pretrain -> evaluate a chosen step -> finetune
from it -> export -> read the export back; resume guards, console, NaN guard, locks.

One tiny pretraining run (demo:test, 6 steps, checkpoints 3 and 6) feeds every test; each test
states what it proves. All commands run as subprocesses on 1 CPU device, as a user runs them.
"""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from _procs import ROOT, read_records, run_cli

from cavmae_jax import cli, convert
from cavmae_jax.models.cavmae import CAVMAE
from cavmae_jax.train import checkpoint
from cavmae_jax.train.run import load_checkpoint

TRAIN = ("--config=configs/demo.py:test", "--config.train.keep_checkpoints=5")


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """12 synthetic 3 s labelled clips: 9 train, 3 test."""
    root = tmp_path_factory.mktemp("workflow_data")
    run = dict(cwd=ROOT, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--output", str(root / "clips"),
                    "--num_clips", "12", "--seed", "1", "--duration", "3", "--size", "64", "64",
                    "--no_progress"], **run)
    subprocess.run([sys.executable, "-m", "data_prep.convert", "--input", str(root / "clips"),
                    "--output", str(root / "data"), "--labels",
                    str(root / "clips" / "labels.csv"), "--holdout", "0.25", "--holdout_split",
                    "test", "--no_progress"], **run)
    return root / "data"


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    workdir = tmp_path_factory.mktemp("workflow") / "pretrain"
    proc = _ok(run_cli("cavmae_jax.main", *TRAIN, f"--workdir={workdir}",
                       f"--config.data.dir={data_dir}"))
    return workdir, proc


def test_checkpoints_carry_their_config(pretrained):
    workdir, _ = pretrained
    steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert steps == ["3", "6"]
    saved = checkpoint.read_config(workdir / "checkpoints" / "3")
    assert saved == json.loads((workdir / "config.json").read_text())
    assert saved["model"]["embed_dim"] == 32 and saved["train"]["num_steps"] == 6


def test_console_shows_our_lines_only(pretrained):
    """Default verbosity: the banner, one line per logged step, the final line; no library
    INFO (Orbax, absl) lines."""
    _, proc = pretrained
    lines = (proc.stdout + proc.stderr).splitlines()
    assert lines[0].startswith("pretraining sync in ") and "fresh start" in lines[0]
    assert [ln.split(" |")[0] for ln in lines if ln.startswith("step ")] == [
        "step 2/6", "step 4/6", "step 6/6"]
    assert lines[-1].startswith("done: step 6 of 6")
    assert not [ln for ln in lines if ln[:1] in "IW" and ln[1:5].isdigit()]  # absl's I1201 ...
    assert not [ln for ln in lines if "orbax" in ln.lower() or "absl" in ln.lower()]
    assert len(lines) <= 11, lines


def test_evaluate_any_step_with_another_optimizer_config(pretrained, data_dir):
    """Step 3 by path, with a --config whose optimizer differs: the model comes from the
    checkpoint, no optimizer state is read, and the report says where it came from."""
    workdir, _ = pretrained
    _ok(run_cli("cavmae_jax.evaluate", f"--checkpoint={workdir / 'checkpoints' / '3'}",
                "--config=configs/demo.py", "--config.optim.grad_clip_norm=0",
                f"--data_dir={data_dir}"))
    report = json.loads((workdir / "eval" / "step_3" / "retrieval.json").read_text())
    prov = report["provenance"]
    assert (prov["step"], prov["kind"], prov["split"]) == (3, "step", "test")
    assert prov["data_dir"] == str(data_dir)
    assert prov["config"]["model"]["embed_dim"] == 32  # the checkpoint's model, not demo.py's
    assert report["num_clips"] == 3
    # The workdir means its latest step, reported at W/eval.
    _ok(run_cli("cavmae_jax.evaluate", f"--checkpoint={workdir}"))
    latest = json.loads((workdir / "eval" / "retrieval.json").read_text())
    assert latest["provenance"]["step"] == 6


def test_finetune_from_a_pretraining_step(pretrained, data_dir, tmp_path):
    workdir, _ = pretrained
    ft = tmp_path / "finetune"
    proc = _ok(run_cli("cavmae_jax.main", "--config=configs/demo.py:test", f"--workdir={ft}",
                       f"--config.data.dir={data_dir}", "--config.task=finetune",
                       "--config.finetune.loss=ce",
                       f"--config.train.init_from={workdir / 'checkpoints' / '3'}"))
    text = proc.stdout + proc.stderr
    assert "init_from: " in text and "'mlp_head_1/kernel'" in text  # the head starts fresh
    assert [r["step"] for r in read_records(ft)][-1] == 6


def test_export_and_convert_back_give_the_same_params(pretrained, tmp_path):
    workdir, _ = pretrained
    out, npz = tmp_path / "params", tmp_path / "official.npz"
    _ok(run_cli("cavmae_jax.export", f"--checkpoint={workdir / 'checkpoints' / '3'}",
                f"--output={out}", f"--torch={npz}"))
    step = load_checkpoint(workdir / "checkpoints" / "3")
    exported = load_checkpoint(out)
    assert exported.config == step.config and exported.kind == "params"
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(step.params),
                 jax.device_get(exported.params))
    # The official-layout state dict converts back to the same params.
    back, report = convert.convert_state_dict(convert.read_state_dict(npz),
                                              CAVMAE(step.config.model))
    assert not report.missing and not report.unexpected
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(step.params), back)
    # An existing output folder is refused, not overwritten.
    again = run_cli("cavmae_jax.export", f"--checkpoint={workdir}", f"--output={out}")
    assert again.returncode == 2 and again.stderr.strip().startswith("error: ")
    assert len(again.stderr.strip().splitlines()) == 1


def test_resume_with_another_model_setting_is_refused(pretrained, data_dir):
    workdir, _ = pretrained
    before = (workdir / "config.json").read_text()
    proc = run_cli("cavmae_jax.main", *TRAIN, f"--workdir={workdir}",
                   f"--config.data.dir={data_dir}", "--config.model.num_heads=4")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "model.num_heads: 2 -> 4" in err[0], proc.stderr
    assert (workdir / "config.json").read_text() == before


def test_bad_inputs_get_one_line(pretrained, tmp_path):
    workdir, _ = pretrained
    cases = [
        ("cavmae_jax.evaluate", f"--checkpoint={tmp_path / 'nowhere'}", "checkpoint not found"),
        ("cavmae_jax.evaluate", f"--checkpoint={tmp_path}", "is not a checkpoint"),
        ("cavmae_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
         "--config.model.embed_dimm=3", "no such config key"),
        ("cavmae_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}",
         "config.data.dir is empty"),
    ]
    for module, *args, message in cases:
        proc = run_cli(module, *args)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and message in err[0], (args, proc.stderr)


def test_non_finite_loss_is_never_checkpointed(data_dir, tmp_path):
    """lr=1e6 with a checkpoint every step and metrics only every 8: the run stops with one
    line, and every checkpoint it left is finite (so a rerun can resume from it)."""
    workdir = tmp_path / "nan"
    proc = run_cli("cavmae_jax.main", "--config=configs/demo.py:test", f"--workdir={workdir}",
                   f"--config.data.dir={data_dir}", "--config.optim.lr=1e6",
                   "--config.train.checkpoint_every=1", "--config.train.log_every=8",
                   "--config.train.num_steps=12", "--config.train.keep_checkpoints=20")
    assert proc.returncode == 2 and "NaN/Inf" in proc.stderr, proc.stderr[-2000:]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert steps and steps[-1] < 12
    for step in steps:
        params = load_checkpoint(workdir / "checkpoints" / str(step)).params
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params)), step


def _truncate_arrays(step_dir: pathlib.Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


def _break_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "state" / "_METADATA").write_text("{not json")


def _break_iterator(step_dir: pathlib.Path) -> None:
    for f in (step_dir / "data_iter").glob("*.json"):
        f.write_text('{"next_index": ')


@pytest.mark.parametrize("damage", [_truncate_arrays, _break_metadata, _break_iterator],
                         ids=["truncated-arrays", "broken-METADATA", "broken-iterator-json"])
def test_unreadable_latest_checkpoint_falls_back_to_an_older_one(pretrained, data_dir,
                                                                 tmp_path, damage):
    import shutil

    workdir = tmp_path / "corrupt"
    shutil.copytree(pretrained[0] / "checkpoints", workdir / "checkpoints")
    damage(workdir / "checkpoints" / "6")
    proc = _ok(run_cli("cavmae_jax.main", *TRAIN, f"--workdir={workdir}",
                       f"--config.data.dir={data_dir}"))
    text = proc.stdout + proc.stderr
    assert "Checkpoint step 6" in text and "unreadable" in text and "resumed from step 3" in text
    assert (workdir / "checkpoints" / "6.unreadable").is_dir()  # kept, set aside
    assert (workdir / "checkpoints" / "6" / "state").is_dir()  # redone


def test_no_readable_checkpoint_is_one_line(pretrained, data_dir, tmp_path):
    import shutil

    workdir = tmp_path / "all_corrupt"
    shutil.copytree(pretrained[0] / "checkpoints", workdir / "checkpoints")
    for step in ("3", "6"):
        _break_metadata(workdir / "checkpoints" / step)
    proc = run_cli("cavmae_jax.main", *TRAIN, f"--workdir={workdir}",
                   f"--config.data.dir={data_dir}")
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(err) == 1 and "no readable checkpoint" in err[0], \
        proc.stderr[-2000:]


def test_a_second_training_on_the_same_workdir_is_refused(tmp_path):
    with cli.workdir_lock(tmp_path):
        with pytest.raises(cli.WorkdirBusy, match=r"in use by a training run \(pid \d+"):
            with cli.workdir_lock(tmp_path):
                pass
    with cli.workdir_lock(tmp_path):  # released: the next run may start
        pass
