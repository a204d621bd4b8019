"""The text-to-image families fine-tuning knows: how a family's pipeline is loaded, conditioned on captions,
trained and saved. The family of a model is read from its own ``model_index.json`` (:func:`mc_bench.train.runs.
pipeline_family`); this module says what each family needs.

============  ===========================  ==================================  =============================  ==========
family        pipeline                     denoiser                            conditioning                   objective
============  ===========================  ==================================  =============================  ==========
tiny-sd, sd1, StableDiffusionPipeline      ``unet`` (UNet2DConditionModel)     CLIP last hidden states        DDPM
sd2
sdxl          StableDiffusionXLPipeline    ``unet`` (UNet2DConditionModel,     two CLIP encoders' penultimate DDPM
                                           ``addition_embed_type="text_time"``) states, pooled text, size and
                                                                               crop ids
sd3           StableDiffusion3Pipeline     ``transformer`` (SD3Transformer2D-  two CLIP encoders (+ T5, or    rectified
                                           Model, an MMDiT)                    zeros without it), pooled text flow
============  ===========================  ==================================  =============================  ==========

The conditioning is computed by the pipeline's own ``encode_prompt`` (SDXL, SD3), so training conditions the
denoiser exactly as sampling does. The objectives follow diffusers' ``train_text_to_image_lora_sdxl.py`` (DDPM
families: :func:`mc_bench.train.loss.diffusion_loss`) and ``train_dreambooth_lora_sd3.py`` (rectified flow:
:func:`mc_bench.train.loss.flow_matching_loss`, timesteps drawn logit-normally).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """What fine-tuning needs to know about one pipeline family."""

    names: tuple[str, ...]  # the family names (runs.pipeline_family) this entry covers
    pipeline_class: str  # the diffusers pipeline class
    denoiser: str  # the pipeline's trained component, and the run folder's subfolder of a full fine-tune
    denoiser_class: str
    text_encoders: tuple[str, ...]  # frozen during fine-tuning (absent ones, such as SD3 without T5, are skipped)
    objective: str  # "ddpm" (epsilon / v / sample prediction) or "flow" (rectified flow)
    # the VAE may be cast to fp16 for fp16 training; SDXL's overflows there, and diffusers' SDXL script keeps it in
    # float32 ("to avoid NaN losses")
    vae_fp16: bool = True

    def pipeline_type(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def denoiser_type(self):
        import diffusers

        return getattr(diffusers, self.denoiser_class)

    def load_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments of the family's pipeline."""
        if self.pipeline_class == "StableDiffusionPipeline":
            return {"safety_checker": None, "requires_safety_checker": False}
        return {}


SD = Family(("tiny-sd", "sd1", "sd2"), "StableDiffusionPipeline", "unet", "UNet2DConditionModel", ("text_encoder",),
            "ddpm")
SDXL = Family(("sdxl",), "StableDiffusionXLPipeline", "unet", "UNet2DConditionModel",
              ("text_encoder", "text_encoder_2"), "ddpm", vae_fp16=False)
SD3 = Family(("sd3",), "StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel",
             ("text_encoder", "text_encoder_2", "text_encoder_3"), "flow")
FAMILIES: dict[str, Family] = {name: family for family in (SD, SDXL, SD3) for name in family.names}


def get_family(name: str) -> Family:
    """The :class:`Family` of a family name; unknown or unsupported names raise ``KeyError``."""
    return FAMILIES[name]


def family_of(pipe) -> Family:
    """The :class:`Family` of a loaded pipeline, from its class."""
    name = type(pipe).__name__
    for family in FAMILIES.values():
        if family.pipeline_class == name:
            return family
    raise KeyError(f"no fine-tuning family for pipeline class {name!r}")


def text_encoders(pipe, family: Family) -> list[torch.nn.Module]:
    return [getattr(pipe, name) for name in family.text_encoders if getattr(pipe, name, None) is not None]


@torch.no_grad()
def encode_captions(pipe, family: Family, captions: list[str], resolution: int,
                    geometry: list[tuple[int, int, int, int]] | None = None) -> dict:
    """The denoiser's keyword arguments that condition it on ``captions`` (besides the noisy latents and
    timesteps), as the family's pipeline computes them when it samples without guidance. ``geometry``: per image,
    its original height and width and its crop's top-left corner (SDXL's size and crop ids, as diffusers' SDXL
    script computes them per image); None: square images of ``resolution``, uncropped."""
    from .loss import encode_text

    if family is SD:
        return {"encoder_hidden_states": encode_text(pipe.tokenizer, pipe.text_encoder, captions)}
    device = pipe.text_encoder.device
    if family is SDXL:
        embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        if pipe.config.force_zeros_for_empty_prompt:  # the pipeline's unconditional input is zeros: dropped
            empty = torch.tensor([c == "" for c in captions], device=embeds.device)  # captions train it
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        # original size, crop top-left, target size
        geometry = geometry or [(resolution, resolution, 0, 0)] * len(captions)
        time_ids = torch.tensor([[h, w, top, left, resolution, resolution] for h, w, top, left in geometry],
                                dtype=embeds.dtype, device=embeds.device)
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
    if family is SD3:
        embeds, _, pooled, _ = pipe.encode_prompt(captions, captions, captions, device=device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
    raise KeyError(family)


def select(conditioning: dict, index) -> dict:
    """Rows ``index`` of every tensor of a conditioning dictionary (nested dictionaries included)."""
    return {key: select(value, index) if isinstance(value, dict) else value[index]
            for key, value in conditioning.items()}


def to(conditioning: dict, device, dtype=None) -> dict:
    """A conditioning dictionary moved to ``device`` (and floating tensors cast to ``dtype``)."""
    return {key: to(value, device, dtype) if isinstance(value, dict)
            else value.to(device, dtype if dtype is not None and value.is_floating_point() else value.dtype)
            for key, value in conditioning.items()}


def training_scheduler(pipe, family: Family):
    """The noise scheduler of training: DDPM with the pipeline's betas and prediction type, or the flow-matching
    scheduler of the pipeline (its sigmas and timesteps) for rectified-flow families."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if family.objective == "flow":
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return DDPMScheduler.from_config(pipe.scheduler.config)


def denoising_loss(family: Family, denoiser, noise_scheduler, latents: torch.Tensor, conditioning: dict,
                   generator: torch.Generator, snr_gamma: float | None = None,
                   flow_timesteps: str = "logit_normal") -> torch.Tensor:
    """One training loss of the family's objective (``flow_timesteps``: how a rectified-flow family draws its
    timesteps, :func:`mc_bench.train.loss.flow_matching_loss`)."""
    from .loss import diffusion_loss, flow_matching_loss

    if family.objective == "flow":
        return flow_matching_loss(denoiser, noise_scheduler, latents, conditioning, generator, flow_timesteps)
    conditioning = dict(conditioning)
    text = conditioning.pop("encoder_hidden_states")
    return diffusion_loss(denoiser, noise_scheduler, latents, text, generator, snr_gamma, **conditioning)


def save_lora(denoiser, family: Family, folder) -> None:
    """Save the denoiser's LoRA layers in the format the family's ``load_lora_weights`` reads, with the adapter's
    config (rank, ``lora_alpha``, target modules) as safetensors metadata: without it a reloaded adapter whose alpha
    differs from its rank would sample at scale 1 instead of alpha / rank."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    metadata = denoiser.peft_config["default"].to_dict()
    if isinstance(metadata.get("target_modules"), (set, list, tuple)):  # a set: sorted, so the file's bytes do not
        metadata["target_modules"] = sorted(metadata["target_modules"])  # depend on the process's hash seed
    prefix = family.denoiser  # unet_lora_layers / transformer_lora_layers
    family.pipeline_type().save_lora_weights(folder, safe_serialization=True, **{
        f"{prefix}_lora_layers": layers, f"{prefix}_lora_adapter_metadata": metadata})


@torch.no_grad()
def denoiser_output(denoiser, device=None, seed: int = 0) -> torch.Tensor:
    """The denoiser's output (float32, on the CPU) for fixed random latents, timesteps and conditioning of the right
    shapes — a UNet (SD, or SDXL's with pooled text and size ids) or an SD3 transformer. Two denoisers with the same
    weights give the same output: how weight round trips (LoRA reload, full fine-tune reload) are checked."""
    config = denoiser.config
    device = device or next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    latents = randn(2, config.in_channels, config.sample_size, config.sample_size)
    timesteps = torch.tensor([10, 500], device=device)
    if hasattr(config, "joint_attention_dim"):  # SD3's transformer
        return denoiser(hidden_states=latents, timestep=timesteps, encoder_hidden_states=randn(2, 8,
                        config.joint_attention_dim), pooled_projections=randn(2, config.pooled_projection_dim),
                        return_dict=False)[0].float().cpu()
    extra = {}
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and six size/crop ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": randn(2, pooled), "time_ids": randn(2, 6).abs() * 16}
    return denoiser(latents, timesteps, randn(2, 8, config.cross_attention_dim), **extra).sample.float().cpu()
