"""The official class-balanced sampler: the weight formula and the per-epoch weighted draws."""

import numpy as np
import pytest

from cavmae_jax.data import sampling


def test_weights_follow_the_official_gen_weight_file_formula():
    labels = [[0], [0], [1], [0, 2], []]
    w = sampling.class_balanced_weights(labels, num_classes=4)
    lw = 1000.0 / (np.array([3, 1, 1, 0]) + 0.01)  # counts per class, +0.01 as the official
    np.testing.assert_allclose(w, [lw[0], lw[0], lw[1], lw[0] + lw[2], 0.0])
    with pytest.raises(ValueError, match="labeled clips"):
        sampling.class_balanced_weights([[], []], num_classes=3)


def test_epochs_draw_with_replacement_in_proportion_to_the_weights():
    weights = np.array([1.0, 1.0, 1.0, 5.0])
    ds = sampling.WeightedEpochs(weights, seed=0, num_epochs=3000)
    assert len(ds) == 4 * 3000
    draws = np.array([ds[i] for i in range(len(ds))])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.01)
    # With replacement: some epochs repeat a clip (the uniform shuffle never does).
    epochs = draws.reshape(-1, 4)
    assert any(len(set(e)) < 4 for e in epochs)
    # Position i depends only on (seed, i): a fresh dataset, visited in another order, agrees.
    again = sampling.WeightedEpochs(weights, seed=0)
    assert [again[i] for i in reversed(range(40))] == draws[:40][::-1].tolist()
    other = sampling.WeightedEpochs(weights, seed=1)
    assert [other[i] for i in range(40)] != draws[:40].tolist()
    with pytest.raises(ValueError, match="non-negative"):
        sampling.WeightedEpochs(np.array([0.0, 0.0]), seed=0)
