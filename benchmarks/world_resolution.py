"""Cost of one training step of a tiny text-to-image UNet at the world's candidate resolutions (16 vs 32).

The world's resolution is chosen by this measurement: later stages fine-tune every zoo model on every target
(320 runs on 2 CPU cores). Prints seconds per step at each resolution and, last, ``ratio=<t32/t16>``.
Usage: python benchmarks/world_resolution.py [--steps N] [--threads T]
"""

import argparse
import time

import torch
from diffusers import UNet2DConditionModel


def step_time(resolution: int, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    # A latent-space UNet on a 4× downsampling VAE would see resolution/4; the tiny zoo works in pixel-sized
    # latents of 4 channels at resolution/2, the cheapest setting that still draws recognisable 16×16 images.
    unet = UNet2DConditionModel(
        sample_size=resolution // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64, attention_head_dim=8,
        norm_num_groups=8,
    )
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, resolution // 2, resolution // 2)
    text = torch.randn(batch, 12, 64)
    t = torch.randint(0, 1000, (batch,))
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(unet(x, t, text).sample, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - start) / steps


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t16 = step_time(16, args.steps, args.batch)
    t32 = step_time(32, args.steps, args.batch)
    print(f"16x16: {t16 * 1000:.1f} ms/step   32x32: {t32 * 1000:.1f} ms/step   (batch {args.batch}, {args.threads} thread)")
    print(f"ratio={t32 / t16:.2f}")
