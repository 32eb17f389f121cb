"""CAV-MAE Sync pretraining (our recipe: the official Sync repo releases no training code).

Architecture = the released model: 4.16 s windows (416 fbank frames) paired with one of 16
frames, global tokens, 8 register tokens, no contrastive heads. The training recipe is CAV-MAE's
(its AudioSet-2M pretraining script), which Sync was built from: Adam with coupled L2 5e-7, betas (0.95, 0.999), lr 5e-5
halved after epochs 10, 15, 20, batch 48, 25 epochs, mask 0.75, lambda_c 0.01, lambda_mae 1.0,
noise augmentation. norm_pix_loss is off (the Sync constructor default; it does not affect
retrieval). Each clip contributes one random (window, frame) pair per visit, as the official
Sync loader does.

    python -m cavmae_jax.main --config=configs/sync_pretrain.py --workdir=W --config.data.dir=D
"""

from configs import common


def get_config(arg: str = "") -> "common.ml_collections.ConfigDict":
    c = common.get_base_config()
    c.model = common.model_config(arch="sync", audio_length=416, global_tokens=True,
                                  num_register_tokens=8, contrastive_heads=False,
                                  norm_pix_loss=False)
    c.optim.update(name="official_adam", lr=5e-5, weight_decay=5e-7, b1=0.95, b2=0.999,
                   lr_decay_start=10, lr_decay_step=5, lr_decay_rate=0.5)
    c.train.global_batch_size = 48
    c.train.num_epochs = 25
    c.data.augment.noise = True
    if arg == "local":
        common.shrink_to_local(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'local'")
    return c
