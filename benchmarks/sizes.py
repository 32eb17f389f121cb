"""Model sizes shared by model_step.py (JAX) and official_step.py (PyTorch); imports nothing.

12 encoder layers (11 modality-specific + 1 joint), MLP ratio 4, for every size:
the tiny / small / base of the quoted reference rates (17.0 / 4.8 / 0.81 samples/s), so the
numbers compare with them.
"""

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dim=192, num_heads=3, decoder_embed_dim=128, decoder_depth=2,
                 decoder_num_heads=4),
    "small": dict(embed_dim=384, num_heads=6, decoder_embed_dim=256, decoder_depth=4,
                  decoder_num_heads=8),
    "base": dict(embed_dim=768, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                 decoder_num_heads=16),
}
