"""The train step: on-device frame normalization and grad_norm on logging steps only."""

import jax
import numpy as np
import optax

from cavmae_jax import video
from cavmae_jax.models.cavmae import CAVMAE, init_params
from cavmae_jax.models.config import ModelConfig
from cavmae_jax.train import optim
from cavmae_jax.train import state as state_lib
from cavmae_jax.train import step as step_lib

TINY = dict(embed_dim=32, num_heads=2, modality_specific_depth=1, joint_depth=1,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, audio_length=64,
            num_register_tokens=2)


def _setup():
    config = ModelConfig(**TINY)
    model = CAVMAE(config)
    tx, schedule = optim.build_optimizer({"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
                                         steps_per_epoch=1, total_steps=10)
    state = state_lib.create(init_params(config, jax.random.key(0)), tx, seed=0)
    rng = np.random.default_rng(0)
    batch = {"audio": rng.standard_normal((2, 64, 128)).astype(np.float32),
             "video": rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)}
    return model, tx, schedule, state, batch


def test_step_normalizes_uint8_frames_like_the_host():
    model, tx, schedule, state, batch = _setup()
    audio, frames = jax.jit(step_lib.model_inputs)(batch)
    np.testing.assert_allclose(np.asarray(frames), video.normalize_image(batch["video"]),
                               rtol=0, atol=1e-6)
    # The loss of a uint8 batch equals the loss of the same frames normalized on the host.
    normalized = dict(batch, video=video.normalize_image(batch["video"]))
    key = jax.random.key(3)
    loss_u8, _ = jax.jit(lambda p, b: step_lib.pretrain_loss(model, p, b, key))(state.params,
                                                                                 batch)
    out = jax.jit(lambda p, a, v: model.apply({"params": p}, a, v,
                                              *step_lib.masking_noise(model, key, 2),
                                              method=CAVMAE.pretrain))(
        state.params, batch["audio"], normalized["video"])
    np.testing.assert_allclose(float(loss_u8), float(out["loss"]), rtol=1e-6)


def test_grad_norm_only_on_logging_steps_same_update():
    model, tx, schedule, state, batch = _setup()
    step = jax.jit(step_lib.make_train_step(model, tx, schedule))
    compiles = []

    def on_event(event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        logged_state, logged = step(state, batch, np.bool_(True))
        quiet_state, quiet = step(state, batch, np.bool_(False))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert len(compiles) == 1  # the flag is traced: one executable for both kinds of step
    grads = jax.jit(jax.grad(lambda p: step_lib.pretrain_loss(
        model, p, batch, state_lib.step_key(state))[0]))(state.params)
    np.testing.assert_allclose(float(logged["grad_norm"]), float(optax.tree.norm(grads)),
                               rtol=1e-5)
    assert float(quiet["grad_norm"]) == 0.0
    assert float(quiet["loss"]) == float(logged["loss"])
    for a, b in zip(jax.tree.leaves(quiet_state), jax.tree.leaves(logged_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Without the flag (a Python True) the step always reports it.
    _, default = jax.jit(step_lib.make_train_step(model, tx, schedule))(state, batch)
    assert float(default["grad_norm"]) == float(logged["grad_norm"])
