"""baseline: the diffusion baseline that Tessera's generator is compared against.

A small text-conditioned UNet (diffusers) denoising pixels, its transformer text
encoder, the DDPM loss (epsilon / v / x0 targets, min-SNR weights) and DDIM /
DPM-Solver++ sampling with classifier-free guidance:

    from baseline import DiffusionConfig, DiffusionBaseline, DiffusionSampleConfig, sample
    model = DiffusionBaseline(DiffusionConfig(text_vocab=len(tok), pad_id=pad))
    images = sample(model, text_ids, DiffusionSampleConfig(steps=25))   # (B, 3, R, R) in [-1, 1]

A library beside vqtok and ar_model: it imports torch, einops, diffusers (the
`baseline` extra) and safetensors, never the rest of Tessera. Text ids are
whatever tokenizer the caller used (the training stage uses the generator's).
"""

from baseline.diffusion import (
    PREDICTION_TYPES,
    SAMPLERS,
    BaselineError,
    DiffusionBaseline,
    DiffusionConfig,
    DiffusionSampleConfig,
    TextEncoder,
    diffusion_loss,
    load_baseline,
    make_sampler,
    min_snr_weights,
    sample,
    save_baseline,
    to_uint8,
    train_scheduler,
)

__all__ = [
    "PREDICTION_TYPES",
    "SAMPLERS",
    "BaselineError",
    "DiffusionBaseline",
    "DiffusionConfig",
    "DiffusionSampleConfig",
    "TextEncoder",
    "diffusion_loss",
    "load_baseline",
    "make_sampler",
    "min_snr_weights",
    "sample",
    "save_baseline",
    "to_uint8",
    "train_scheduler",
]
