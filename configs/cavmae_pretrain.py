"""CAV-MAE pretraining, the official AudioSet-2M 'base' recipe.

Batch 48, Adam with coupled L2 5e-7, betas (0.95, 0.999), lr 5e-5 halved after epochs 10, 15,
20, 25 epochs, mask 0.75 on both modalities, lambda_c 0.01, norm_pix_loss on, full 1024-frame
audio, a random one of the frames per clip in training, noise augmentation on.
The official run started from ImageNet MAE weights adapted to both branches; pass them with
--config.train.init_from=DIR.

    python -m cavmae_jax.main --config=configs/cavmae_pretrain.py --workdir=W \\
        --config.data.dir=DATA
    python -m cavmae_jax.main --config=configs/cavmae_pretrain.py:local ...   # small + quick
"""

from configs import common


def get_config(arg: str = "") -> "common.ml_collections.ConfigDict":
    c = common.get_base_config()
    c.model = common.model_config(
        arch="cavmae", audio_length=1024, global_tokens=False, num_register_tokens=0,
        norm_pix_loss=True, mask_ratio_a=0.75, mask_ratio_v=0.75, contrast_loss_weight=0.01,
        mae_loss_weight=1.0)
    c.optim.update(name="official_adam", lr=5e-5, weight_decay=5e-7, b1=0.95, b2=0.999,
                   lr_decay_start=10, lr_decay_step=5, lr_decay_rate=0.5)
    c.train.global_batch_size = 48
    c.train.num_epochs = 25
    c.data.augment.noise = True
    c.eval.middle_frame_only = True
    if arg == "local":
        common.shrink_to_local(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'local'")
    return c
