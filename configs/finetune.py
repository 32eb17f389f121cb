"""CAV-MAE classification finetuning: the official AudioSet-20K, AudioSet-2M and VGGSound recipes.

    python -m cavmae_jax.main --config=configs/finetune.py:vggsound --workdir=W \\
        --config.data.dir=VGG --config.train.init_from=PRETRAINED_PARAMS
    python -m cavmae_jax.main --config=configs/finetune.py:as20k ...
    python -m cavmae_jax.main --config=configs/finetune.py:vggsound_local ...   # tiny, quick

From the official finetuning scripts: CAVMAEFT encoder (trainable positional tables), the
multimodal mode, full 1024-frame audio, init from a pretrained CAV-MAE (`cav-mae-scale++`;
convert it with `python -m cavmae_jax.convert` and pass it as init_from), Adam with coupled L2
5e-7 and betas (0.95, 0.999) with the head at `head_lr_mult` x lr, lr x0.5 per epoch from
`lr_decay_start`, mixup 0.5, SpecAugment 48/192, noise, label smoothing 0.1, and the weight
average of epochs [wa_start, wa_end] written to W/params_averaged at the end:

| recipe   | loss (metric) | batch | lr   | head | epochs | decay from | WA     | balanced |
|----------|---------------|-------|------|------|--------|------------|--------|----------|
| as20k    | BCE (mAP)     | 36    | 5e-5 | 100x | 15     | 5          | 3-15   | no       |
| as2m     | BCE (mAP)     | 48    | 1e-5 | 50x  | 10     | 2          | 1-10   | yes      |
| vggsound | CE (accuracy) | 48    | 1e-4 | 10x  | 10     | 2          | 3-10   | yes      |

AS-2M and VGGSound draw their training clips with the official class-balanced sampler
(`data.balanced_sampling`, see cavmae_jax/data/sampling.py: weights from the train split's
labels, read from the records when the run starts); AS-20K visits every clip once per epoch.
"""

from configs import common

RECIPES = {
    "as20k": dict(loss="bce", batch=36, lr=5e-5, head=100.0, epochs=15, decay=5, wa=(3, 15),
                  balanced=False),
    "as2m": dict(loss="bce", batch=48, lr=1e-5, head=50.0, epochs=10, decay=2, wa=(1, 10),
                 balanced=True),
    "vggsound": dict(loss="ce", batch=48, lr=1e-4, head=10.0, epochs=10, decay=2, wa=(3, 10),
                     balanced=True),
}


def get_config(arg: str = "vggsound") -> "common.ml_collections.ConfigDict":
    name, _, variant = arg.partition("_")
    if name not in RECIPES or variant not in ("", "local"):
        raise ValueError(f"unknown finetune recipe {arg!r}; use one of {sorted(RECIPES)}, "
                         "optionally with '_local' (e.g. vggsound_local)")
    r = RECIPES[name]
    c = common.get_base_config()
    c.task = "finetune"
    c.model = common.model_config(
        arch="cavmae", audio_length=1024, global_tokens=False, num_register_tokens=0,
        trainable_pos_embed=True)
    c.finetune.update(mode="multimodal", loss=r["loss"], wa_start=r["wa"][0], wa_end=r["wa"][1])
    c.optim.update(name="official_adam", lr=r["lr"], weight_decay=5e-7, b1=0.95, b2=0.999,
                   head_lr_mult=r["head"], lr_decay_start=r["decay"], lr_decay_step=1,
                   lr_decay_rate=0.5)
    c.train.update(global_batch_size=r["batch"], num_epochs=r["epochs"])
    c.data.augment.update(noise=True, mixup=0.5, freqm=48, timem=192, label_smooth=0.1)
    c.data.balanced_sampling = r["balanced"]
    c.eval.middle_frame_only = False  # predictions are averaged over every frame
    if variant == "local":
        common.shrink_to_local(c)
        c.finetune.update(wa_start=1, wa_end=2)
    return c
