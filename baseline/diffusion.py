"""The diffusion baseline: a small text-conditioned UNet (diffusers) that denoises pixels.

What Tessera's generator is compared against, at the same size and on the same data:
the same captions, encoded by the same text tokenizer as the generator's, go through a
small transformer text encoder trained with the UNet; the UNet
(`diffusers.UNet2DConditionModel`) attends to its output by cross-attention and
predicts the noise (DDPM objective, Ho et al. 2020). Captions are
dropped to all-[PAD] with probability `cond_dropout`, so one model serves conditional
and unconditional predictions and classifier-free guidance mixes them:

    eps = uncond + (cond - uncond) * scale                      (Ho & Salimans 2022)

Sampling uses diffusers' schedulers built from the training schedule's config: DDIM
(deterministic, eta 0) or DPM-Solver++ (multistep, 2nd order), at any step count.
Pixel space at the world's resolution: images in [-1, 1], (B, 3, R, R).

Saved as a directory: config.json (this module's format and version, and the sha256 of the
weights, checked on load) + model.safetensors, and the text tokenizer the ids came from
(text_tokenizer/, loadable with ar_model.load_text_tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

FORMAT = "tessera.diffusion-baseline"
VERSION = 1
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
VERIFY_ENV = "TESSERA_VERIFY_WEIGHTS"  # "0" turns load_baseline's sha256 check off by default (very large files)
SAMPLERS = ("ddim", "dpm++")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class BaselineError(ValueError):
    """A bad baseline config or checkpoint; the message names the field or file."""


def _diffusers() -> Any:
    """The diffusers module, or an ImportError that says how to get it (it is the `baseline` extra)."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("the diffusion baseline needs diffusers: pip install 'tessera[baseline]' "
                          "(or pip install diffusers)") from e
    return diffusers


@dataclass
class DiffusionConfig:
    text_vocab: int  # len(text tokenizer): ids are looked up directly
    pad_id: int  # the text tokenizer's [PAD]: an all-pad caption is the unconditional one
    text_len: int = 18  # the generator's text length, so both read the same ids
    glyph_slots: int = 0  # the generator's glyph slots (ar_model.layout.encode_text): the same ids again
    glyph_end: bool = False  # and its end marks
    resolution: int = 24  # pixels; must be divisible by 2 ** (levels - 1)
    # 1.16M parameters with the text encoder at the demo's 342-token BPE, the tiny generator's 1.14M
    # (kept within 25% of it, so the comparison is at equal size); three levels 24 -> 12 -> 6 px,
    # cross-attention at 12 and 6 px
    block_out_channels: list[int] = field(default_factory=lambda: [32, 48, 48])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    text_dim: int = 64  # text encoder width = the UNet's cross-attention dim
    text_layers: int = 2
    text_heads: int = 4
    num_train_timesteps: int = 1000  # DDPM's
    beta_schedule: str = "squaredcos_cap_v2"  # the cosine schedule: better than linear at low resolution
    # what the UNet predicts: "epsilon" (DDPM's noise), "v_prediction" (Salimans & Ho 2022) or
    # "sample" (x0); all three are diffusers scheduler prediction types
    prediction_type: str = "epsilon"
    # per-timestep loss weights: "none" (DDPM's simple loss) or "min_snr" (Hang et al. 2023:
    # min(SNR, gamma) relative to the target's own scale, which stops the nearly clean timesteps
    # from dominating and speeds convergence ~3x in their runs)
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    cond_dropout: float = 0.1  # the generator's default too

    def __post_init__(self):
        levels = len(self.block_out_channels)
        if self.resolution % 2 ** (levels - 1):
            raise BaselineError(f"resolution {self.resolution} is not divisible by 2^{levels - 1} "
                                f"({levels} UNet levels)")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise BaselineError(f"block_out_channels {self.block_out_channels} must be multiples of "
                                f"norm_num_groups {self.norm_num_groups}")
        if not 0 <= self.cond_dropout < 1:
            raise BaselineError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise BaselineError(f"unknown prediction_type {self.prediction_type!r} "
                                f"(known: {', '.join(PREDICTION_TYPES)})")
        if self.loss_weighting not in ("none", "min_snr"):
            raise BaselineError(f"unknown loss_weighting {self.loss_weighting!r} (known: none, min_snr)")
        if self.text_dim % self.text_heads:
            raise BaselineError(f"text_dim {self.text_dim} must be a multiple of text_heads {self.text_heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise BaselineError(f"unknown baseline config key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**d)


class TextEncoder(nn.Module):
    """Token + position embeddings and a pre-norm transformer encoder: (B, T) ids -> (B, T, D).

    Pads are not masked: an all-[PAD] caption is the unconditional input and must give
    finite states (a fully masked row would give NaN attention).
    """

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.embed = nn.Embedding(cfg.text_vocab, cfg.text_dim)
        self.pos = nn.Parameter(torch.zeros(cfg.text_len, cfg.text_dim))
        layer = nn.TransformerEncoderLayer(cfg.text_dim, cfg.text_heads, 4 * cfg.text_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[: ids.shape[1]]  # (B, T, D)
        return self.norm(self.encoder(x))  # (B, T, D)


class DiffusionBaseline(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        levels = len(cfg.block_out_channels)
        self.text = TextEncoder(cfg)
        self.unet = _diffusers().UNet2DConditionModel(
            sample_size=cfg.resolution, in_channels=3, out_channels=3, layers_per_block=cfg.layers_per_block,
            block_out_channels=tuple(cfg.block_out_channels),
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
            cross_attention_dim=cfg.text_dim, attention_head_dim=cfg.attention_head_dim,
            norm_num_groups=cfg.norm_num_groups,
        )

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, text_ids: torch.Tensor) -> torch.Tensor:
        """The prediction (noise, velocity or clean image per cfg.prediction_type), (B, 3, R, R), for noisy images (B, 3, R, R) at timesteps t (B,)."""
        return self.unet(noisy, t, encoder_hidden_states=self.text(text_ids)).sample


def train_scheduler(cfg: DiffusionConfig) -> Any:
    return _diffusers().DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                      prediction_type=cfg.prediction_type)


def make_sampler(cfg: DiffusionConfig, name: str) -> Any:
    """A diffusers scheduler for sampling, on the training schedule's betas."""
    d = _diffusers()
    base = train_scheduler(cfg).config
    if name == "ddim":
        return d.DDIMScheduler.from_config(base, clip_sample=False, set_alpha_to_one=True)
    if name == "dpm++":
        return d.DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2)
    raise BaselineError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})")


def min_snr_weights(scheduler: Any, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (B,) for timesteps t, for the scheduler's prediction type
    (Hang et al. 2023, eq. 11: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v, 1 capped for x0)."""
    abar = scheduler.alphas_cumprod.to(t.device)[t]  # (B,)
    snr = abar / (1 - abar)
    capped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return capped / snr
    if kind == "v_prediction":
        return capped / (snr + 1)
    return capped  # sample (x0)


def diffusion_loss(model: DiffusionBaseline, images: torch.Tensor, text_ids: torch.Tensor, scheduler: Any,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's simple loss: MSE at a uniform timestep between the model's output and its target
    (the noise added, the velocity, or the clean image, per the scheduler's prediction type)."""
    b = images.shape[0]
    noise = torch.randn(images.shape, generator=generator).to(images.device)  # (B, 3, R, R)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(images.device)  # (B,)
    noisy = scheduler.add_noise(images, noise, t)
    kind = scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": images}.get(kind)
    if target is None:  # v_prediction
        target = scheduler.get_velocity(images, noise, t)
    cfg = model.cfg
    if cfg.loss_weighting == "none":
        return nn.functional.mse_loss(model(noisy, t, text_ids), target)
    per_image = (model(noisy, t, text_ids) - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (per_image * min_snr_weights(scheduler, t, cfg.min_snr_gamma)).mean()


@dataclass(frozen=True)
class DiffusionSampleConfig:
    sampler: str = "ddim"  # or "dpm++"
    steps: int = 25  # network evaluations per image (twice that with guidance != 1)
    cfg_scale: float = 1.5
    seed: int | None = 0  # seeds the initial noise (and DDIM is deterministic after it)
    # rewrite each prompt with the run's prompt expander first (read by pipelines.DiffusionPipeline, not here)
    expand: bool = False

    def __post_init__(self):
        if not isinstance(self.expand, bool):
            raise BaselineError(f"expand must be true or false, got {self.expand!r}")
        if self.sampler not in SAMPLERS:
            raise BaselineError(f"unknown sampler {self.sampler!r} (known: {', '.join(SAMPLERS)})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise BaselineError(f"steps must be an integer >= 1, got {self.steps!r}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or not (
                abs(self.cfg_scale) <= 1000):  # also refuses NaN; larger scales overflow to NaN images
            raise BaselineError(f"cfg_scale must be a number in [-1000, 1000], got {self.cfg_scale!r}")


@torch.no_grad()
def sample(model: DiffusionBaseline, text_ids: torch.Tensor, sc: DiffusionSampleConfig,
           init: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
    """Images in [-1, 1], (B, 3, R, R), for text ids (B, T); conditional and unconditional rows in one batch.

    With `init` (B, 3, R, R) in [-1, 1]: SDEdit (Meng et al. 2022), the way diffusers' img2img pipelines
    do it: noise `init` to the timestep `strength` of the way into the schedule and run only the
    remaining steps (`round(steps * strength)` of them); strength 1 starts from pure noise.
    """
    model.eval()
    device = next(model.parameters()).device
    cfg = model.cfg
    b = text_ids.shape[0]
    gen = torch.Generator().manual_seed(sc.seed) if sc.seed is not None else None
    x = torch.randn((b, 3, cfg.resolution, cfg.resolution), generator=gen).to(device)  # (B, 3, R, R)
    scheduler = make_sampler(cfg, sc.sampler)
    scheduler.set_timesteps(sc.steps)
    timesteps = scheduler.timesteps
    if init is not None:
        if not 0 < strength <= 1:
            raise BaselineError(f"strength must be in (0, 1], got {strength!r}")
        keep = max(1, round(sc.steps * strength))
        timesteps = timesteps[sc.steps - keep :]
        if hasattr(scheduler, "set_begin_index"):  # multistep solvers count their steps from here
            scheduler.set_begin_index(sc.steps - keep)
        x = scheduler.add_noise(init.to(device).float(), x, timesteps[:1].to(device))
    text_ids = text_ids.to(device)
    guided = sc.cfg_scale != 1
    if guided:
        uncond = torch.full_like(text_ids, cfg.pad_id)
        text_ids = torch.cat([text_ids, uncond])  # (2B, T): rows [0, B) conditional, [B, 2B) unconditional
    for t in timesteps:
        inp = torch.cat([x, x]) if guided else x
        out = model(scheduler.scale_model_input(inp, t), t.expand(len(inp)).to(device), text_ids)  # per prediction_type
        if guided:
            cond, unc = out.chunk(2)
            out = unc + (cond - unc) * sc.cfg_scale  # linear in the output, so any prediction type mixes alike
        x = scheduler.step(out, t, x).prev_sample
    return x.clamp(-1, 1)


def _sha256(path: Path) -> str:
    """The sha256 of the file at `path`, read in 1 MiB chunks (a large file is never held in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_baseline(model: DiffusionBaseline, directory: str | Path, text_tokenizer: Any = None,
                  extra_files: dict[str, str] | None = None) -> Path:
    """config.json + model.safetensors (+ text_tokenizer/ when given, + `extra_files` {name: text}), written
    to a temporary directory and renamed into place. config.json records the sha256 of model.safetensors."""
    import shutil

    from safetensors.torch import save_model

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS_NAME))
    meta = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
            "sha256": {WEIGHTS_NAME: _sha256(tmp / WEIGHTS_NAME)}}  # checked by load_baseline
    (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    if text_tokenizer is not None:
        text_tokenizer.save_pretrained(str(tmp / "text_tokenizer"))
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def load_baseline(directory: str | Path, device: str | torch.device = "cpu", *,
                  verify: bool | None = None) -> DiffusionBaseline:
    """Load a directory written by `save_baseline`, in eval mode on `device`; strict about every weight.

    model.safetensors is checked against the sha256 recorded in config.json when it was
    written (directories without one load unchecked); the check reads the whole file once
    more, so for very large files `verify=False` skips it; when `verify` is not given, the
    environment variable TESSERA_VERIFY_WEIGHTS=0 turns it off (an explicit `verify=True`
    checks regardless). Weights holding NaN or inf are refused either way.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise BaselineError(f"'{directory}' is not a diffusion-baseline directory: {CONFIG_NAME} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"cannot read '{path}' as JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise BaselineError(f"'{path}' is not a version-{VERSION} Tessera diffusion baseline "
                            f"(format {meta.get('format') if isinstance(meta, dict) else None!r})")
    weights = directory / WEIGHTS_NAME
    recorded = meta.get("sha256", {})  # absent in directories written before it was recorded
    if not isinstance(recorded, dict) or not isinstance(recorded.get(WEIGHTS_NAME, ""), str):
        raise BaselineError(f"'{path}' has a malformed \"sha256\" entry (expected {{file name: hex digest}})")
    if verify is None:
        verify = os.environ.get(VERIFY_ENV, "1").strip() != "0"
    if verify and WEIGHTS_NAME in recorded and weights.is_file():  # a missing file: load_model names it below
        try:
            actual = _sha256(weights)
        except OSError as e:
            raise BaselineError(f"cannot load '{weights}': {e}") from e
        if actual != recorded[WEIGHTS_NAME]:
            raise BaselineError(f"cannot load '{weights}': the file does not match the sha256 recorded when it was "
                                "written; it is damaged or was replaced")
    model = DiffusionBaseline(DiffusionConfig.from_dict(meta["config"]))
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise BaselineError(f"cannot load '{weights}': {e}") from e
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise BaselineError(f"cannot load '{weights}': tensor '{bad[0]}' holds non-finite values (NaN or inf)"
                            f"{more}; the weights are unusable")
    return model.to(device).eval()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (B, 3, R, R) -> uint8 (B, R, R, 3)."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c h w -> b h w c").cpu()


__all__ = ["PREDICTION_TYPES", "SAMPLERS", "VERIFY_ENV", "BaselineError", "DiffusionBaseline", "DiffusionConfig",
           "DiffusionSampleConfig", "TextEncoder", "diffusion_loss", "load_baseline", "make_sampler",
           "min_snr_weights", "sample", "save_baseline", "to_uint8", "train_scheduler"]
