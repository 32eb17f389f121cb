"""CAV-MAE Sync pretraining: the released model, trained with the authors' research recipe.

The official Sync repository releases the model but no training code; the authors' research
branch (edsonroteia/cav-mae, branch CAVMAEv2: `run_cavmae_pretrain_sync.sh`,
`traintest_cavmae_sync.py`, `cosine_scheduler.py`) has the trainer. Taken from it:
- Adam with coupled L2 5e-7, betas (0.95, 0.999), no gradient clipping;
- lr 2e-4, batch 512 (4 GPUs), 25 epochs; cosine schedule stepped every iteration, linear
  warmup over the first 10 % of the iterations, down to 0.1 x lr at the end;
- masking 0.75 unstructured for both modalities, norm_pix_loss on, MAE weight 1.0,
  contrastive weight 0.1, one direction, temperature 0.05;
- no noise (the script passes noise=True but the loader's noise line is commented out), no
  mixup, no SpecAugment; one uniformly random frame per clip per visit, its window around it.
Architecture = the released checkpoint (`sync_pretrain_registers_cls_4s`): 416-frame (4.16 s)
windows paired with one of 16 frames, global (cls) tokens, 8 register tokens, no contrastive
heads. (The research script's own defaults differ: 96-frame windows, no registers, no global
tokens; those are the paper's ablations, settable here with --config.model.*.)

Not recoverable, so not reproduced: whether the released model was trained with the branch's
`global_local_losses` (our `model.global_local_losses` implements it; off here), and its
initialization from ImageNet MAE weights (`ori_mae_11.pth`: convert them yourself and pass
`--config.train.init_from`); the warmup starts at 0 rather than at lr / warmup_iterations.

    python -m cavmae_jax.main --config=configs/sync_pretrain.py --workdir=W --config.data.dir=D
"""

from configs import common


def get_config(arg: str = "") -> "common.ml_collections.ConfigDict":
    c = common.get_base_config()
    c.model = common.model_config(arch="sync", audio_length=416, global_tokens=True,
                                  num_register_tokens=8, contrastive_heads=False,
                                  norm_pix_loss=True, mask_ratio_a=0.75, mask_ratio_v=0.75,
                                  contrast_loss_weight=0.1, mae_loss_weight=1.0)
    c.optim.update(name="official_adam", lr=2e-4, weight_decay=5e-7, b1=0.95, b2=0.999,
                   schedule="warmup_cosine", warmup_fraction=0.1, end_lr=2e-5)
    c.train.global_batch_size = 512
    c.train.num_epochs = 25
    if arg == "local":
        common.shrink_to_local(c)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'local'")
    return c
