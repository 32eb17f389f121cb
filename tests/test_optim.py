"""Optimizer chains against a numpy re-implementation of torch.optim.Adam's documented algorithm."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cavmae_jax.train import optim

B1, B2, EPS = 0.95, 0.999, 1e-8


def _problem(seed: int = 0):
    """Params with a backbone, a head and a fixed table; grad = a * p + b (a quadratic loss)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "encoder": {"kernel": (4, 3), "bias": (3,)},
        "mlp_head": {"kernel": (3, 2), "bias": (2,)},
        "pos_embed_a": (5, 3),
    }
    params = jax.tree.map(
        lambda s: rng.normal(size=s), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    a = jax.tree.map(lambda p: rng.uniform(0.5, 2.0, size=p.shape), params)
    b = jax.tree.map(lambda p: rng.normal(size=p.shape), params)
    return params, a, b


def _grads(params, a, b):
    return jax.tree.map(lambda p, a_, b_: a_ * p + b_, params, a, b)


def torch_adam_reference(params, a, b, lr_fn, wd, steps, lr_mult=None, frozen=None, clip_norm=0.0):
    """numpy float64 transcription of torch.optim.Adam (amsgrad=False, maximize=False).

    For t = 1..: g = grad (+ clip_grad_norm_ over trainable params) ; g = g + wd * p ;
    m = b1 m + (1 - b1) g ; v = b2 v + (1 - b2) g^2 ;
    p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    Param groups: lr_mult[name] scales lr; frozen[name] params have requires_grad=False.
    """
    leaves, treedef = jax.tree.flatten(params)
    names = [optim.param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    a_l, b_l = jax.tree.leaves(a), jax.tree.leaves(b)
    p = [np.array(x, np.float64) for x in leaves]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    lr_mult = lr_mult or {}
    frozen = frozen or set()
    for t in range(1, steps + 1):
        lr = float(lr_fn(t - 1))  # the scheduler's LR during the t-th step
        g = [a_l[i] * p[i] + b_l[i] for i in range(len(p))]
        if clip_norm:
            total = np.sqrt(sum(np.sum(g[i] ** 2) for i in range(len(p)) if names[i] not in frozen))
            scale = min(1.0, clip_norm / total)  # torch: clip_coef clamped to 1 (eps negligible)
            g = [gi * scale for gi in g]
        for i in range(len(p)):
            if names[i] in frozen:
                continue
            gi = g[i] + wd * p[i]
            m[i] = B1 * m[i] + (1 - B1) * gi
            v[i] = B2 * v[i] + (1 - B2) * gi * gi
            step_size = lr * lr_mult.get(names[i], 1.0) / (1 - B1**t)
            denom = np.sqrt(v[i]) / np.sqrt(1 - B2**t) + EPS
            p[i] = p[i] - step_size * m[i] / denom
    return jax.tree.unflatten(treedef, p)


def _run(tx, params, a, b, steps, dtype=jnp.float32):
    """`steps` jitted updates of `tx` on the quadratic problem, computed in `dtype`."""
    params, a, b = jax.tree.map(lambda x: jnp.asarray(x, dtype), (params, a, b))
    opt_state = tx.init(params)

    @jax.jit
    def step(p, s):
        updates, s = tx.update(_grads(p, a, b), s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params, opt_state


def _assert_tree_close(x, y, **kw):
    for (path, xl), yl in zip(
        jax.tree_util.tree_flatten_with_path(x)[0], jax.tree.leaves(y), strict=True
    ):
        np.testing.assert_allclose(np.asarray(xl), yl, err_msg=optim.param_path(path), **kw)


def test_official_adam_matches_torch_adam_with_coupled_l2_and_step_decay():
    params, a, b = _problem()
    wd, steps = 0.1, 8  # large wd so that coupling visibly matters
    schedule = optim.multistep_lr(1e-2, steps_per_epoch=2, decay_start=1, decay_step=2, gamma=0.5)
    tx = optim.official_adam(schedule, weight_decay=wd)
    ref = torch_adam_reference(params, a, b, schedule, wd, steps)
    with jax.enable_x64(True):  # same arithmetic as the float64 reference: exact to rounding
        ours64, _ = _run(tx, params, a, b, steps, jnp.float64)
        _assert_tree_close(ours64, ref, rtol=1e-12, atol=1e-12)
    ours, _ = _run(tx, params, a, b, steps)  # float32, as in training
    _assert_tree_close(ours, ref, rtol=1e-4, atol=1e-5)

    # Decoupled decay (AdamW) gives a visibly different trajectory.
    adamw, _ = _run(optax.adamw(schedule, B1, B2, EPS, weight_decay=wd), params, a, b, steps)
    diff = max(
        float(np.max(np.abs(np.asarray(x) - y)))
        for x, y in zip(jax.tree.leaves(adamw), jax.tree.leaves(ref), strict=True)
    )
    assert diff > 1e-3


def test_multistep_lr_matches_torch_milestones():
    # CAV-MAE base: x0.5 after epochs 10, 15, 20 (milestones range(10, 1000, 5)).
    s = optim.multistep_lr(1.0, steps_per_epoch=4, decay_start=10, decay_step=5, gamma=0.5)
    lr_at_epoch = lambda e: float(s(e * 4))
    assert [lr_at_epoch(e) for e in (0, 9, 10, 14, 15, 20, 24)] == [
        1.0,
        1.0,
        0.5,
        0.5,
        0.25,
        0.125,
        0.125,
    ]
    assert float(s(10 * 4 - 1)) == 1.0  # last step of epoch index 9 still undecayed
    # Finetuning recipe start 2 step 1: decays after every epoch from the 2nd on.
    s2 = optim.multistep_lr(1.0, steps_per_epoch=1, decay_start=2, decay_step=1, gamma=0.5)
    assert [float(s2(e)) for e in range(5)] == [1.0, 1.0, 0.5, 0.25, 0.125]


def test_build_optimizer_head_mult_freeze_and_clip_match_reference():
    params, a, b = _problem(1)
    cfg = ml_collections.ConfigDict(
        dict(
            name="official_adam",
            lr=1e-2,
            weight_decay=0.05,
            lr_decay_start=1,
            lr_decay_step=1,
            head_lr_mult=10.0,
            head_patterns=("^mlp_head/",),
            freeze_patterns=("pos_embed",),
            grad_clip_norm=0.5,
        )
    )
    tx, schedule = optim.build_optimizer(cfg, steps_per_epoch=3)
    steps = 7
    ref = torch_adam_reference(
        params,
        a,
        b,
        schedule,
        0.05,
        steps,
        lr_mult={"mlp_head/kernel": 10.0, "mlp_head/bias": 10.0},
        frozen={"pos_embed_a"},
        clip_norm=0.5,
    )
    with jax.enable_x64(True):
        ours64, _ = _run(tx, params, a, b, steps, jnp.float64)
        _assert_tree_close(ours64, ref, rtol=1e-12, atol=1e-12)
    ours, opt_state = _run(tx, params, a, b, steps)
    _assert_tree_close(ours, ref, rtol=1e-4, atol=1e-5)
    # Frozen table: bit-identical, and no Adam moments allocated for it.
    np.testing.assert_array_equal(
        np.asarray(ours["pos_embed_a"]), params["pos_embed_a"].astype(np.float32)
    )
    moment_sizes = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim > 0)
    trainable = sum(
        x.size
        for k, x in jax.tree_util.tree_flatten_with_path(params)[0]
        if "pos_embed" not in optim.param_path(k)
    )
    assert moment_sizes == 2 * trainable


def test_adamw_warmup_cosine_and_no_decay_on_1d():
    cfg = dict(name="adamw", lr=1e-3, weight_decay=0.5, warmup_steps=10, end_lr=1e-5)
    tx, schedule = optim.build_optimizer(cfg, steps_per_epoch=5, total_steps=100)
    np.testing.assert_allclose(
        [float(schedule(t)) for t in (0, 5, 10, 100)], [0.0, 5e-4, 1e-3, 1e-5], rtol=1e-6
    )
    params = {"dense": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones((3,))}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    state = tx.init(params)
    for _ in range(12):
        updates, state = tx.update(zero_grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(params["dense"]["kernel"][0, 0]) < 1.0  # decoupled decay shrinks kernels
    np.testing.assert_array_equal(np.asarray(params["dense"]["bias"]), np.ones(3))


def test_official_adam_with_the_authors_warmup_cosine():
    """The Sync research recipe: coupled-L2 Adam on a per-iteration cosine with 10 % warmup,
    down to 0.1 x lr; `schedule` picks the schedule whatever the optimizer."""
    cfg = dict(name="official_adam", lr=2e-4, schedule="warmup_cosine", warmup_fraction=0.1,
               end_lr=2e-5, warmup_steps=999)  # the fraction wins over warmup_steps
    _, schedule = optim.build_optimizer(cfg, steps_per_epoch=7, total_steps=200)
    mid = 2e-5 + (2e-4 - 2e-5) * 0.5  # halfway through the cosine part
    np.testing.assert_allclose([float(schedule(t)) for t in (0, 10, 20, 110, 200)],
                               [0.0, 1e-4, 2e-4, mid, 2e-5], rtol=1e-5)
    # The step schedule for AdamW, on request.
    _, step = optim.build_optimizer(dict(name="adamw", lr=1.0, schedule="step", lr_decay_start=1,
                                         lr_decay_step=1, lr_decay_rate=0.5), steps_per_epoch=2)
    assert [float(step(t)) for t in (0, 2, 4)] == [1.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="schedule must be one of"):
        optim.build_optimizer({"schedule": "linear"}, steps_per_epoch=1)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="head_lr_multiplier"):
        optim.build_optimizer({"head_lr_multiplier": 2.0}, steps_per_epoch=1)
    with pytest.raises(ValueError, match="sgd"):
        optim.build_optimizer({"name": "sgd"}, steps_per_epoch=1)


def test_weight_averaging_equals_mean_of_epochs():
    rng = np.random.default_rng(0)
    epochs = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=2)} for _ in range(6)]
    wa_start, wa_end = 2, 5
    avg, count = None, 0
    for epoch, params in enumerate(epochs, start=1):
        if optim.in_wa_window(epoch, wa_start, wa_end):
            avg = optim.running_mean(avg, params, count)
            count += 1
    assert count == 4
    expected = jax.tree.map(lambda *xs: np.mean(xs, axis=0), *epochs[1:5])
    _assert_tree_close(avg, expected, rtol=1e-6, atol=1e-6)

    e = optim.ema(None, epochs[0], 0.9)
    e = optim.ema(e, epochs[1], 0.9)
    _assert_tree_close(
        e, jax.tree.map(lambda x, y: 0.9 * x + 0.1 * y, epochs[0], epochs[1]), rtol=1e-6, atol=1e-6
    )
