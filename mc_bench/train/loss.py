"""The diffusion objective shared by fine-tuning and the zoo's pretraining.

It follows diffusers' ``train_text_to_image.py`` / ``train_text_to_image_lora.py``: images normalised to [-1, 1],
encoded by the VAE; noise and timesteps drawn; noise added with the pipeline's scheduler and the target of its
``prediction_type`` regressed (``epsilon``: the noise; ``v_prediction``: the velocity; ``sample``: the clean latents),
optionally weighted by min-SNR-γ (Hang et al., 2023). Rectified-flow models (SD3) regress the velocity
``noise - latents`` at ``(1 - σ) · latents + σ · noise`` instead (diffusers' ``train_dreambooth_lora_sd3.py``, whose
default draws the timestep from a logit-normal density, mean 0 and std 1, with unit loss weighting:
``diffusers.training_utils.compute_density_for_timestep_sampling`` / ``compute_loss_weighting_for_sd3``; the zoo's
pretraining keeps the uniform draw it was made with).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> float (n, 3, h, w) in [-1, 1], as diffusers' training scripts normalise."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_text(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    """Last hidden states of the text encoder for padded captions, as Stable Diffusion conditions its UNet."""
    tok = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    return text_encoder(tok.input_ids.to(text_encoder.device))[0]


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   generator: torch.Generator, snr_gamma: float | None = None, **conditioning) -> torch.Tensor:
    """One denoising loss (diffusers' text-to-image objective; see the module docstring). Random draws come from
    the CPU ``generator`` (so that CPU and GPU runs draw the same numbers) and move to the latents' device.
    ``conditioning``: further keyword arguments of the UNet (SDXL's ``added_cond_kwargs``)."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    timesteps = timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    elif prediction_type == "sample":
        target = latents
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    pred = unet(noisy, timesteps, encoder_hidden_states, **conditioning).sample
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    alphas = noise_scheduler.alphas_cumprod.to(device)[timesteps]
    snr = alphas / (1 - alphas)
    weight = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    weight = {"epsilon": weight / snr, "v_prediction": weight / (snr + 1), "sample": weight}[prediction_type]
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (loss * weight).mean()


def flow_matching_loss(transformer, noise_scheduler, latents: torch.Tensor, conditioning: dict,
                       generator: torch.Generator, weighting_scheme: str = "logit_normal") -> torch.Tensor:
    """One rectified-flow loss (SD3): the transformer predicts ``noise - latents`` from the interpolation
    ``(1 - σ) · latents + σ · noise`` at a training timestep drawn by ``weighting_scheme`` (diffusers' SD3 script:
    ``logit_normal`` by default; ``uniform``: every training timestep alike), the squared error weighted as that
    script weights it. ``conditioning``: the transformer's text inputs (``encoder_hidden_states``,
    ``pooled_projections``)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

    device = latents.device
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    n = len(noise_scheduler.timesteps)
    if weighting_scheme == "uniform":
        index = torch.randint(0, n, (latents.shape[0],), generator=generator)
    else:
        u = compute_density_for_timestep_sampling(weighting_scheme, latents.shape[0], logit_mean=0.0, logit_std=1.0,
                                                  mode_scale=1.29, generator=generator)
        index = (u * n).long().clamp(max=n - 1)
    timesteps = noise_scheduler.timesteps[index].to(device)
    sigmas = noise_scheduler.sigmas[index].to(device, latents.dtype).view(-1, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    pred = transformer(hidden_states=noisy, timestep=timesteps, return_dict=False, **conditioning)[0]
    if weighting_scheme == "uniform":  # the zoo's pretraining loss, bit for bit
        return F.mse_loss(pred.float(), (noise - latents).float())
    weighting = compute_loss_weighting_for_sd3(weighting_scheme, sigmas).float()
    error = (weighting * (pred.float() - (noise - latents).float()) ** 2).reshape(latents.shape[0], -1)
    return error.mean(1).mean()
