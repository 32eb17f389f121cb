"""Training on CPU with the real pieces: mp4 -> ArrayRecord -> Grain -> jit -> Orbax, subprocesses.

Data: 16 synthetic 3 s clips with labels (data_prep.synthetic), converted by data_prep.convert.
The runs (jobs of the `runs` fixture) and what the tests prove with them:

* `ref`: `python -m cavmae_jax.main --config=configs/demo.py:test` on 8 CPU devices (mesh
  data=8), N_STEPS steps: checkpoints, metrics.jsonl (finite), config.json, TensorBoard events.
  It is the uninterrupted reference of every other run.
* `meshes`: ref's step-25 checkpoint restored onto data=2 x fsdp=4 (FSDP on: parameters
  resharded) and onto 1 device continues with ref's losses (float32 reduction order only).
* `chain`: one workdir, three processes: SIGTERMed (saves the step it stopped at, exits 0),
  restarted and SIGKILLed after a checkpoint >= 10 steps later, restarted to the end. Every
  logged number equals ref's bit for bit.
* `steps`: tests/_train_helpers.py builds the step from loop.build_run / init_state /
  make_train_step on 1 device (global and local negatives) and with local negatives on 8.
* `dist`: 2 processes x 1 CPU device under jax.distributed (gloo), `--multihost`.
* `finetune`: CE finetuning on the synthetic labels beats chance clearly.
* `parity`: the official-format parity checkpoint, converted by `cavmae_jax.convert`, initialises
  a classifier: every encoder tensor loaded, only the head fresh; it trains.

The subprocesses run concurrently (at most MAX_PROCESSES), share a JAX compilation cache in a
tmp dir, and are killed at module teardown.
"""
import concurrent.futures
import functools
import json
import math
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import _procs
import jax
import numpy as np
import pytest
from _procs import Proc, Slots, read_records, wait_for

ROOT = _procs.ROOT
PARITY = ROOT / "tests" / "fixtures" / "parity"
N_STEPS = 28  # long enough for a SIGKILL and a SIGTERM restart with >= 10 steps after each
CKPT_EVERY = 5
RESTORE_STEP = 25  # the ref checkpoint the other meshes restore
# The 2-process run is shorter: its steps compare with ref's first DIST_STEPS while both are in
# the demo's LR warmup (50 steps), where the LR does not depend on num_steps (the test checks it).
DIST_STEPS = 8
TIMEOUT = _procs.TIMEOUT
MAX_PROCESSES = 3  # training subprocesses at once: ~1-1.6 GB each
# Metrics that are a function of (params, data, step); the rest are wall-clock throughput.
DETERMINISTIC = ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "c_acc", "grad_norm",
                 "lr")
# Across meshes the only difference is float32 summation order: XLA splits every batch mean and
# gradient sum into per-device partial sums plus an all-reduce, and reordering a float32 sum moves
# it by a few ulps (eps = 1.2e-7 relative). Measured here: losses within 4e-7 and grad norms
# within 9e-7 (relative) after up to 3 steps on another mesh. 1e-5 leaves 10x margin and is far
# below what a real bug does (another mask, batch row or update moves the loss by >= 1e-3).
MESH_RTOL = 1e-5
# The demo:test recipe with every step logged, periodic checkpoints, all of them kept.
BASE_FLAGS = ("--config=configs/demo.py:test", f"--config.train.num_steps={N_STEPS}",
              "--config.train.log_every=1", f"--config.train.checkpoint_every={CKPT_EVERY}",
              "--config.train.keep_checkpoints=20", "--config.train.async_checkpoints=False")
PARITY_MODEL_FLAGS = ("--config.model.arch=cavmae", "--config.model.audio_length=64",
                      "--config.model.embed_dim=64", "--config.model.num_heads=4",
                      "--config.model.modality_specific_depth=11", "--config.model.joint_depth=1",
                      "--config.model.global_tokens=False", "--config.model.num_register_tokens=0",
                      "--config.model.img_size=224")  # the fixture is the official 224 model


class Runs:
    """Starts the training subprocesses of this module at once; tests wait on the results.

    Each `_job_<name>` runs in its own thread; `result(name)` waits for it. The reference and the
    jobs that wait for it (the restart chain, the other meshes) have priority for process slots.
    """

    # Start order: a job only waits for jobs listed before it; long independent jobs start
    # early so that the last minute is not one process on one core.
    JOBS = ("ref", "parity", "steps", "dist", "finetune", "chain", "meshes")

    def __init__(self, data: pathlib.Path, tmp: pathlib.Path, cache: pathlib.Path,
                 jobs: Sequence[str] = JOBS):
        self.data, self.tmp, self.cache = data, tmp, cache
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._slots = Slots(MAX_PROCESSES)
        self._closed = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.JOBS))
        self.futures: dict[str, concurrent.futures.Future] = {}
        for name in self.JOBS:
            if name not in jobs:
                continue
            self.futures[name] = self._pool.submit(getattr(self, f"_job_{name}"))

    def result(self, name: str) -> Any:
        return self.futures[name].result(timeout=3 * TIMEOUT)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for p in self._procs:
                if p.poll() is None:
                    p.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def start(self, workdir: pathlib.Path, *flags: str, devices: int = 8, priority: int = 1,
              log_name: str | None = None, env: dict[str, str] | None = None,
              module: str | None = "cavmae_jax.main", has_slot: bool = False) -> Proc:
        """Starts `python -m module flags` (main: plus workdir and data dir) once a slot is free.

        The process's slot is released when `Proc.wait` returns (`has_slot`: already taken).
        """
        if not has_slot:
            self._slots.acquire(1, priority)
        if self._closed:
            self._slots.release(1)
            raise RuntimeError("module teardown started")
        workdir.mkdir(parents=True, exist_ok=True)
        log = self.tmp / f"{log_name or workdir.name}.log"
        args = [sys.executable, *(["-m", module] if module else []), *flags]
        if module == "cavmae_jax.main":  # after --config, which must come first
            args += [f"--workdir={workdir}", f"--config.data.dir={self.data}"]
        with open(log, "ab") as out, self._lock:
            popen = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                     env=env or _procs.env(devices, self.cache))
            self._procs.append(popen)
        return Proc(popen, log, len(read_records(workdir)), functools.partial(self._release, popen))

    def _release(self, popen: subprocess.Popen) -> None:
        with self._lock:
            if popen in self._procs:
                self._procs.remove(popen)
                self._slots.release(1)

    # -- the jobs ------------------------------------------------------------------------------
    def _job_ref(self) -> pathlib.Path:
        workdir = self.tmp / "ref"
        self.start(workdir, *BASE_FLAGS, f"--config.train.checkpoint_every={RESTORE_STEP}",
                   priority=0).wait()
        return workdir

    def _job_chain(self) -> dict[str, Any]:
        """SIGTERM, restart, SIGKILL after a checkpoint, restart: one workdir, three processes."""
        # Start once ref has saved: its executables (train step, checkpoint slicing) are cached.
        ref = self.tmp / "ref"
        wait_for(lambda: _checkpoint_steps(ref), self.futures["ref"].done, "ref's checkpoint")
        workdir = self.tmp / "chain"
        # Checkpoint every step, so the SIGTERM lands on a step the periodic save already wrote
        # (the stop path must not save it a second time).
        termed = self.start(workdir, *BASE_FLAGS, "--config.train.checkpoint_every=1", priority=0)
        wait_for(lambda: read_records(workdir), termed.popen.poll, "the first step")
        termed.popen.send_signal(signal.SIGTERM)
        termed_rc = termed.wait(expect_rc=None)
        termed_lines, termed_ckpts = len(read_records(workdir)), _checkpoint_steps(workdir)

        killed = self.start(workdir, *BASE_FLAGS, priority=0)
        target = 3 * CKPT_EVERY  # >= 10 steps after the SIGTERM restart, < N_STEPS - 10
        wait_for(lambda: target in _checkpoint_steps(workdir), killed.popen.poll,
                  f"checkpoint {target}")
        killed.popen.send_signal(signal.SIGKILL)
        killed_rc = killed.wait(expect_rc=None)
        killed_lines, killed_ckpts = len(read_records(workdir)), _checkpoint_steps(workdir)

        final = self.start(workdir, *BASE_FLAGS, priority=0)
        final.wait()
        return dict(workdir=workdir, termed=termed, termed_rc=termed_rc,
                    termed_lines=termed_lines, termed_ckpts=termed_ckpts, killed=killed,
                    killed_rc=killed_rc, killed_lines=killed_lines, killed_ckpts=killed_ckpts,
                    final=final)

    def _job_meshes(self) -> dict[str, tuple[pathlib.Path, Proc]]:
        ref = self.result("ref")
        out = {}
        for name, devices, flags in (("mesh_2x4", 8, ("--config.mesh.data=2",
                                                       "--config.mesh.fsdp=4")),
                                     ("mesh_1", 1, ())):
            workdir = self.tmp / name
            shutil.copytree(ref / "checkpoints" / str(RESTORE_STEP),
                            workdir / "checkpoints" / str(RESTORE_STEP))
            proc = self.start(workdir, *BASE_FLAGS, *flags, devices=devices, priority=0)
            proc.wait()
            out[name] = (workdir, proc)
        return out

    def _job_steps(self) -> dict[str, Any]:
        out = self.tmp / "steps.json"
        env = _procs.env(8, self.cache, PYTHONPATH=str(ROOT))
        self.start(self.tmp / "steps", str(ROOT / "tests" / "_train_helpers.py"), str(self.data),
                   str(out), str(N_STEPS), module=None, env=env).wait()
        return json.loads(out.read_text())

    def _job_finetune(self) -> pathlib.Path:
        workdir = self.tmp / "finetune"
        self.start(workdir, "--config=configs/demo.py:test", "--config.task=finetune",
                   "--config.finetune.loss=ce", "--config.train.num_steps=40",
                   "--config.train.global_batch_size=16", "--config.train.log_every=1",
                   "--config.train.checkpoint_every=1000", "--config.optim.warmup_steps=3",
                   "--config.optim.head_lr_mult=10", "--config.finetune.wa_start=36",
                   "--config.finetune.wa_end=40", devices=1).wait()
        # Classification eval (frame-averaged softmax) of the weight-averaged params.
        self.start(workdir, "--config=configs/demo.py:test", f"--workdir={workdir}",
                   f"--config.data.dir={self.data}", "--config.task=finetune",
                   "--config.finetune.loss=ce", "--config.data.eval_split=train",
                   "--config.eval.batch_size=2", "--task=classification",
                   f"--checkpoint={workdir / 'params_averaged'}", devices=1,
                   module="cavmae_jax.evaluate", log_name="finetune_eval").wait()
        return workdir

    def _job_dist(self) -> tuple[pathlib.Path, list[Proc]]:
        workdir = self.tmp / "dist"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._slots.acquire(2, 1)  # two processes that must run together
        procs = []
        for pid in range(2):  # one CPU device per process: 2 global devices, mesh data=2
            # No compilation cache: both processes would write the same entries at once.
            env = _procs.env(1, None, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
            procs.append(self.start(workdir, *BASE_FLAGS, "--multihost",
                                    f"--config.train.num_steps={DIST_STEPS}",
                                    "--config.train.checkpoint_every=1000",
                                    log_name=f"dist_{pid}", env=env, has_slot=True))
        for p in procs:
            p.wait()
        return workdir, procs

    def _job_parity(self) -> tuple[pathlib.Path, Proc]:
        params = self.tmp / "parity_params"
        kwargs = json.loads((PARITY / "cavmae_tiny.json").read_text())["constructor_kwargs"]
        convert = subprocess.run(  # seconds; keeps the slot order of the training runs
            [sys.executable, "-m", "cavmae_jax.convert", "--torch", str(PARITY / "cavmae_tiny.npz"),
             "--arch", "cavmae", "--kwargs", json.dumps(kwargs), "--out", str(params)],
            cwd=ROOT, env=_procs.env(1, None), capture_output=True, text=True, timeout=TIMEOUT)
        assert convert.returncode == 0, convert.stdout[-2000:] + convert.stderr[-4000:]
        workdir = self.tmp / "parity"
        proc = self.start(workdir, "--config=configs/demo.py:test", *PARITY_MODEL_FLAGS,
                          "--config.task=finetune", "--config.finetune.loss=ce",
                          "--config.train.num_steps=3", "--config.train.log_every=1",
                          "--config.train.checkpoint_every=1000",
                          f"--config.train.init_from={params}", devices=1)
        proc.wait()
        return workdir, proc


def _by_step(records: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["step"]: {k: r[k] for k in DETERMINISTIC if k in r} for r in records}


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _assert_bit_identical(got: dict[int, dict], ref: dict[int, dict], what: str) -> None:
    for step, values in got.items():
        assert values == ref[step], f"{what}: step {step} differs from the reference run"


def _assert_close(got: dict[int, dict], ref: dict[int, dict], what: str,
                  keys: Sequence[str] = ("loss", "loss_mae", "loss_c", "grad_norm")) -> None:
    for step, values in got.items():
        for k in keys:
            np.testing.assert_allclose(values[k], ref[step][k], rtol=MESH_RTOL,
                                       err_msg=f"{what}: step {step} {k}")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """16 synthetic 3 s clips with labels -> ArrayRecord.

    The fbank is cut to the clip (300 frames, not the default 10 s = 1024), so every frame's
    64-frame window (the demo:test audio_length) holds real audio, not padding.
    """
    root = tmp_path_factory.mktemp("train_data")
    clips, data = root / "clips", root / "data"
    run = dict(cwd=ROOT, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--output", str(clips),
                    "--num_clips", "16", "--seed", "0", "--duration", "3", "--no_progress"],
                   **run)
    subprocess.run([sys.executable, "-m", "data_prep.convert", "--input", str(clips),
                    "--output", str(data), "--split", "train", "--labels",
                    str(clips / "labels.csv"), "--clip_seconds", "3", "--target_length", "300",
                    "--window_length", "64", "--no_progress"], **run)
    return data


# The jobs each test reads (ref is every comparison's reference).
TEST_JOBS = {
    "test_one_device_and_local_negative_steps_agree_with_8_devices": ("ref", "steps"),
    "test_demo_config_trains_end_to_end": ("ref",),
    "test_restore_onto_other_meshes_continues_the_run": ("ref", "meshes"),
    "test_sigterm_and_sigkill_restarts_are_bit_identical": ("ref", "chain"),
    "test_two_process_distributed_run": ("ref", "dist"),
    "test_two_process_losses_match_one_process": ("ref", "dist"),
    "test_finetuning_on_synthetic_labels_beats_chance": ("finetune",),
    "test_finetuning_weight_average_and_classification_eval": ("finetune",),
    "test_official_checkpoint_initialises_finetuning": ("parity",),
}


@pytest.fixture(scope="module")
def runs(request, data_dir, tmp_path_factory):
    """Starts the jobs that the selected tests of this module need, all at once."""
    selected = {item.originalname for item in request.session.items
                if getattr(item, "module", None) is request.module}
    jobs = set().union(*(TEST_JOBS[name] for name in selected))
    tmp = tmp_path_factory.mktemp("train_runs")
    runs = Runs(data_dir, tmp, tmp_path_factory.mktemp("jax_cache"), jobs)
    yield runs
    runs.close()


# ----------------------------------------------------------------------------- tests
def test_one_device_and_local_negative_steps_agree_with_8_devices(runs):
    """The loop's step built in-process on 1 device (global and local negatives) and with local
    negatives on 8 devices, against the 8-device `main` run on the same first batches."""
    ref = _by_step(read_records(runs.result("ref")))
    r = runs.result("steps")
    single = r["single"]
    assert single["mesh"] == {"data": 1, "fsdp": 1}
    for step, got in enumerate(single["metrics"], 1):
        for k in ("loss", "loss_mae", "loss_c", "grad_norm"):
            np.testing.assert_allclose(got[k], ref[step][k], rtol=MESH_RTOL,
                                       err_msg=f"1 device vs data=8, step {step}, {k}")
        assert got["lr"] == ref[step]["lr"]

    # Local negatives on one device: the device's sub-batch is the whole batch, bit for bit.
    assert r["local_single"]["negative_groups"] == 1
    assert r["local_single"]["metrics"] == single["metrics"]
    # On 8 devices x 1 example each there are no negatives at all: InfoNCE is exactly 0 and
    # always "right", while the MAE part (same params, same masks) is unchanged.
    local8 = r["local8"]["metrics"][0]
    assert r["local8"]["negative_groups"] == 8 and r["local8"]["mesh"] == {"data": 8, "fsdp": 1}
    assert local8["loss_c"] == 0.0 and local8["c_acc"] == 1.0 and ref[1]["loss_c"] > 0.0
    np.testing.assert_allclose(local8["loss_mae"], ref[1]["loss_mae"], rtol=MESH_RTOL)


# ----------------------------------------------------------------------------- subprocess tests
def test_demo_config_trains_end_to_end(runs):
    workdir = runs.result("ref")
    records = read_records(workdir)
    assert [r["step"] for r in records] == list(range(1, N_STEPS + 1))
    for r in records:
        for k in ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "grad_norm"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (r["step"], k, r[k])
    assert records[-1]["lr"] > records[0]["lr"] == 0.0  # warmup
    steps = [RESTORE_STEP, N_STEPS]  # every RESTORE_STEP steps, and the last one
    assert _checkpoint_steps(workdir) == steps
    for step in steps:
        assert (workdir / "checkpoints" / str(step) / "state").is_dir()
        assert (workdir / "checkpoints" / str(step) / "data_iter" / "process_0-of-1.json").exists()
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["num_steps"] == N_STEPS and config["model"]["arch"] == "sync"
    assert config["data"]["dir"] == str(runs.data)
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


def test_restore_onto_other_meshes_continues_the_run(runs):
    ref = _by_step(read_records(runs.result("ref")))
    for name, (workdir, proc) in runs.result("meshes").items():
        text = proc.text()
        assert f"resumed from step {RESTORE_STEP}" in text, name
        devices = 1 if name == "mesh_1" else 8
        assert f"1 process(es), {devices} device(s)" in text, name
        got = _by_step(read_records(workdir))
        assert sorted(got) == list(range(RESTORE_STEP + 1, N_STEPS + 1)), name
        _assert_close(got, ref, name)
        assert _checkpoint_steps(workdir) == [RESTORE_STEP, N_STEPS], name
    config = json.loads((runs.tmp / "mesh_2x4" / "config.json").read_text())
    assert (config["mesh"]["data"], config["mesh"]["fsdp"]) == (2, 4)


def test_sigterm_and_sigkill_restarts_are_bit_identical(runs):
    ref = _by_step(read_records(runs.result("ref")))
    chain = runs.result("chain")
    records = read_records(chain["workdir"])
    termed = records[:chain["termed_lines"]]
    killed = records[chain["termed_lines"]:chain["killed_lines"]]
    final = records[chain["killed_lines"]:]

    # SIGTERM: the handler lets the step finish, checkpoints it and the process exits 0; that
    # step is the last one logged and the newest checkpoint, and the log names it.
    termed_log = chain["termed"].text()
    assert chain["termed_rc"] == 0, chain["termed"].tail()
    stop = termed[-1]["step"]
    assert [r["step"] for r in termed] == list(range(1, stop + 1))
    assert max(chain["termed_ckpts"]) == stop
    match = re.search(r"stop requested \(SIGTERM/preemption\): checkpointing step (\d+)",
                      termed_log)
    assert match and int(match.group(1)) == stop, chain["termed"].tail()
    assert "Traceback" not in termed_log
    _assert_bit_identical(_by_step(termed), ref, "SIGTERMed run")

    # The restart continues from that step, bit for bit, for >= 10 steps until its SIGKILL
    # (sent once it had written checkpoint 3 * CKPT_EVERY).
    assert f"resumed from step {stop}" in chain["killed"].text()
    assert chain["killed_rc"] == -signal.SIGKILL
    last_killed = killed[-1]["step"]
    assert [r["step"] for r in killed] == list(range(stop + 1, last_killed + 1))
    assert last_killed - stop >= 10, f"SIGTERM at step {stop} came too late"
    _assert_bit_identical(_by_step(killed), ref, "run restarted after SIGTERM")

    # After the SIGKILL: resume from the newest checkpoint, redo the steps the killed process
    # had done past it, and continue bit for bit to the end (>= 10 steps).
    resumed = max(chain["killed_ckpts"])
    assert resumed >= 3 * CKPT_EVERY and N_STEPS - resumed >= 10
    assert f"resumed from step {resumed}" in chain["final"].text()
    assert [r["step"] for r in final] == list(range(resumed + 1, N_STEPS + 1))
    _assert_bit_identical(_by_step(final), ref, "run restarted after SIGKILL")
    assert _by_step(records).keys() == ref.keys()


def test_two_process_distributed_run(runs):
    workdir, procs = runs.result("dist")
    assert "2 process(es), 2 device(s)" in procs[0].text()  # the banner: process 0 only
    for p in procs:
        assert "jax.distributed: process" in p.text()
    records = read_records(workdir)  # process 0 writes the metrics
    assert [r["step"] for r in records] == list(range(1, DIST_STEPS + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    ref = _by_step(read_records(runs.result("ref")))  # the same LR at every step (warmup)
    assert [r["lr"] for r in records] == [ref[r["step"]]["lr"] for r in records]
    it_states = sorted(p.name for p in (workdir / "checkpoints" / str(DIST_STEPS) /
                                        "data_iter").iterdir() if p.suffix == ".json")
    assert it_states == ["process_0-of-2.json", "process_1-of-2.json"]


def test_two_process_losses_match_one_process(runs):
    ref = _by_step(read_records(runs.result("ref")))
    workdir, _ = runs.result("dist")
    _assert_close(_by_step(read_records(workdir)), ref, "2 processes")


def test_finetuning_on_synthetic_labels_beats_chance(runs):
    records = read_records(runs.result("finetune"))
    meta = json.loads((runs.data / "metadata.json").read_text())
    chance = 1.0 / meta["num_classes"]
    assert meta["num_classes"] == 8
    assert [r["step"] for r in records] == list(range(1, 41))
    last = records[-10:]
    top1 = np.mean([r["train_top1"] for r in last])
    loss = np.mean([r["loss"] for r in last])
    assert top1 >= 2.5 * chance, f"train top-1 {top1:.3f} vs chance {chance:.3f}"
    assert loss < 0.8 * math.log(meta["num_classes"]), f"CE {loss:.3f}, uniform {math.log(8)}"


def test_finetuning_weight_average_and_classification_eval(runs):
    """Epochs 36-40 (one step each) are averaged into W/params_averaged, and evaluating it
    with frame-averaged predictions beats chance on the clips it was finetuned on."""
    from cavmae_jax.train import checkpoint

    workdir = runs.result("finetune")
    params, meta = checkpoint.load_params(workdir / "params_averaged")
    assert meta["averaged_epochs"] == 5 and (meta["wa_start"], meta["wa_end"]) == (36, 40)
    assert "mlp_head_1" in params
    # A params directory's reports go beside it; its provenance names it.
    report = json.loads((workdir / "params_averaged" / "eval" / "classification.json").read_text())
    assert report["provenance"]["checkpoint"] == str(workdir / "params_averaged")
    assert report["num_clips"] == 16 and report["frames_averaged"] == 16
    assert report["top1"] >= 2.5 / 8, report


def test_official_checkpoint_initialises_finetuning(runs):
    workdir, proc = runs.result("parity")
    text = proc.text()
    match = re.search(r"init_from: (\d+) tensors loaded; kept fresh: (\[.*?\]|-); unused: (\d+)",
                      text)
    assert match, proc.tail()
    fresh = match.group(2)
    assert re.findall(r"'([^']+)'", fresh) == ["mlp_head_0/bias", "mlp_head_0/scale",
                                               "mlp_head_1/bias", "mlp_head_1/kernel"]
    # Every other classifier tensor (the whole encoder) came from the converted checkpoint.
    assert int(match.group(1)) == _classifier_tensor_count(workdir, label_dim=8) - 4
    records = read_records(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert records[-1]["lr"] > 0
    assert _checkpoint_steps(workdir) == [3]


def _classifier_tensor_count(workdir: pathlib.Path, label_dim: int) -> int:
    """Number of param tensors of the classifier a run trained (rebuilt from its config.json)."""
    from cavmae_jax.models.config import ModelConfig
    from cavmae_jax.models.heads import CAVMAEClassifier, init_classifier_params

    config = json.loads((workdir / "config.json").read_text())
    model = CAVMAEClassifier(ModelConfig(**config["model"]), label_dim=label_dim)
    shapes = jax.eval_shape(lambda: init_classifier_params(model, jax.random.PRNGKey(0)))
    return len(jax.tree.leaves(shapes))
