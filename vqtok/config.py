"""VQConfig: everything that defines a VQ image tokenizer and its training loss.

Plain data (after nanoGPT's GPTConfig / LlamaGen's ModelArgs): it serializes to
JSON with `to_dict()` and back with `from_dict()`, is frozen (change it with
`replace(**overrides)`, which returns a validated copy), and is validated on
construction so a bad value fails at once with a message naming the field.

The defaults are the CPU world: 32 px shapes-world images, 8x8 codes, a model
of a few hundred thousand parameters that trains in minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from vqtok.errors import ConfigError

QUANTIZERS = ("vq", "fsq", "lfq")
ARCHITECTURES = ("conv", "patch")
NORMS = ("group", "pixel")
RECON_LOSSES = ("l1", "l2")
_TUPLE_FIELDS = ("channel_mult", "fsq_levels")


@dataclass(frozen=True)
class VQConfig:
    # --- images ---
    resolution: int = 32  # the shapes world's CPU resolution; 32 px keeps every stage in minutes on a CPU
    in_channels: int = 3  # RGB

    # --- encoder / decoder ---
    # "conv": taming's residual conv nets with GroupNorm, whose codes depend on the whole image (GroupNorm's
    # statistics and a receptive field of most of it). "patch": each code is made from its own
    # downsample x downsample patch of pixels alone and decoded back to that patch alone (a strided conv and
    # per-position 1x1 layers), so an unchanged patch keeps its code whatever changes elsewhere: what an
    # editor needs to copy the untouched parts of an image exactly (docs/EDITING.md).
    architecture: str = "conv"
    # patch only: 3x3 convs over the code grid at the start of the decoder, so a patch is drawn seeing its
    # neighbours' codes (edges that cross a patch border can join); the codes themselves stay local
    patch_context: int = 0
    base_channels: int = 32  # width of the first level; 32 gives a few hundred k params (CPU-trainable)
    # Width multiplier per level. Every level but the last ends in a 2x downsample,
    # so downsample = 2 ** (len(channel_mult) - 1) (times space_to_depth, below): (1, 2, 2) -> 4x, 32 px -> 8x8 codes.
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1  # residual blocks per level; 1 is enough for flat shapes, taming uses 2
    norm_groups: int = 8  # GroupNorm groups; must divide every level's width (32 would be 1 channel/group here)
    # conv only: "group" (GroupNorm: statistics over the whole map, so a whole photograph is normalised unlike
    # the crops it was trained on) or "pixel" (LayerNorm over the channels at each position alone)
    norm: str = "group"
    latent_dim: int = 64  # channels of the encoder output / decoder input (the quantizer's `dim`)
    # conv only: the decoder's own first-level width and residual blocks per level (0 = the same as the
    # encoder's base_channels / num_res_blocks). A heavier decoder than encoder is the usual asymmetry
    # (MaskGIT / MAGVIT tokenizers): reconstruction is the harder half, and the codes stay what they were.
    decoder_channels: int = 0
    decoder_res_blocks: int = 0
    # conv only: the encoder begins by folding each s x s block of pixels into channels (pixel unshuffle) and
    # the decoder ends by unfolding them (pixel shuffle), so no conv runs at full resolution: the first level
    # runs on 1/s^2 of the pixels (ESPCN's sub-pixel layer). downsample = s * 2 ** (len(channel_mult) - 1).
    space_to_depth: int = 1

    # --- quantizer (vector-quantize-pytorch) ---
    quantizer: str = "vq"  # "vq" (l2-normalised low-dim codes, LlamaGen recipe), "fsq" or "lfq"
    # Codes for vq / lfq (lfq: a power of 2). 256 is plenty for flat shapes and keeps the
    # generator's image vocabulary small; it matches fsq's default (8, 6, 5) = 240 codes.
    codebook_size: int = 256
    codebook_dim: int = 8  # vq: codes live in 8 dims, l2-normalised (LlamaGen: better usage than 256-d codes)
    kmeans_init: bool = False  # vq: init codes by k-means on the first batch; off: dead-code refresh suffices
    fsq_levels: tuple[int, ...] = (8, 6, 5)  # fsq: levels per dim; the FSQ paper's choice for ~2^8 codes
    commitment_weight: float = 0.25  # vq / lfq: beta of VQ-VAE (taming, LlamaGen use 0.25)
    # vq: EMA decay of the codebook. 0.95 (time constant ~20 steps) because CPU runs are ~1k
    # steps; 0.99 (taming / SoundStream) would leave the codes lagging the encoder for a tenth of a run.
    ema_decay: float = 0.95
    dead_code_threshold: float = 2.0  # vq: codes whose EMA usage falls below this are re-seeded from the batch
    lfq_entropy_weight: float = 0.1  # lfq: entropy aux loss weight (vector-quantize-pytorch / MAGVIT-v2 default)

    # --- loss (TokenizerLoss) ---
    # "l2": on mostly-background images L1's median pull makes the decoder output plain
    # background (seen: the CPU preset with l1 reconstructed every image as empty black);
    # "l1" (taming's choice) suits natural images, ideally with the perceptual/GAN terms
    recon_loss: str = "l2"
    perceptual_weight: float = 0.0  # 0 = off: needs VGG16 weights the user provides; off for the CPU world
    perceptual_weights: str | None = None  # path to a local VGG16 safetensors file (never downloaded)
    disc_weight: float = 0.0  # 0 = no adversarial loss; flat shapes reconstruct without a GAN
    disc_start: int = 2000  # step at which the PatchGAN terms start (after the codebook has settled)
    disc_channels: int = 64  # PatchGAN width of the first layer (taming's ndf)
    disc_layers: int = 3  # PatchGAN stride-2 layers (taming's n_layers); 32 px -> 2x2 patches
    # Decoder fine-tuning: from this step on the encoder and the codebook are frozen (the codes no longer
    # change) and only the decoder trains, on the codes as they stand; 0 = never. While everything trains, the
    # codebook's EMA and dead-code refresh keep moving the codes under the decoder; held still, they are drawn
    # sharply (seen: small circles drawn with half-on corners, which parse reads as squares, before it).
    decoder_only_from: int = 0

    def __post_init__(self) -> None:
        for name in _TUPLE_FIELDS:  # JSON brings lists back; the config keeps tuples (hashable, immutable)
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ConfigError naming the field and the value of the first bad setting."""
        _int(self, "resolution", 1)
        _int(self, "in_channels", 1)
        _int(self, "base_channels", 1)
        _int_tuple(self, "channel_mult", 1)
        _int(self, "num_res_blocks", 1)
        _int(self, "norm_groups", 1)
        _int(self, "latent_dim", 1)
        _int(self, "decoder_channels", 0)
        _int(self, "decoder_res_blocks", 0)
        _int(self, "space_to_depth", 1)
        for name, base in (("base_channels", self.base_channels), ("decoder_channels", self.decoder_channels)):
            for m in self.channel_mult:
                if (base * m) % self.norm_groups:
                    raise ConfigError(
                        f"VQConfig.norm_groups={self.norm_groups} must divide every level's width "
                        f"({name} * channel_mult = {base} * {m} = {base * m})"
                    )
        if self.resolution % self.downsample:
            raise ConfigError(
                f"VQConfig.resolution={self.resolution} is not divisible by the downsample factor "
                f"{self.downsample} (space_to_depth * 2 ** (len(channel_mult) - 1) with space_to_depth="
                f"{self.space_to_depth}, channel_mult={list(self.channel_mult)})"
            )

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"VQConfig.architecture must be one of {', '.join(ARCHITECTURES)}, got "
                              f"{self.architecture!r}")
        if self.architecture != "conv" and (self.decoder_channels or self.decoder_res_blocks
                                            or self.space_to_depth != 1):
            raise ConfigError("VQConfig.decoder_channels / decoder_res_blocks / space_to_depth are for the conv "
                              f"architecture (architecture {self.architecture!r}: set them to 0, 0, 1)")
        _int(self, "patch_context", 0)
        if self.norm not in NORMS:
            raise ConfigError(f"VQConfig.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"VQConfig.quantizer must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        _int(self, "codebook_size", 2)
        _int(self, "codebook_dim", 1)
        if not isinstance(self.kmeans_init, bool):
            raise ConfigError(f"VQConfig.kmeans_init must be true or false, got {self.kmeans_init!r}")
        # vector-quantize-pytorch's FSQ asserts on a level of 2 (it needs preserve_symmetry)
        _int_tuple(self, "fsq_levels", 3)
        if self.quantizer == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ConfigError(
                f"VQConfig.codebook_size={self.codebook_size} must be a power of 2 for quantizer 'lfq' "
                "(one bit per latent channel)"
            )
        _float(self, "commitment_weight")
        _float(self, "ema_decay")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"VQConfig.ema_decay must be in (0, 1), got {self.ema_decay!r}")
        _float(self, "dead_code_threshold")
        _float(self, "lfq_entropy_weight")

        if self.recon_loss not in RECON_LOSSES:
            raise ConfigError(
                f"VQConfig.recon_loss must be one of {', '.join(RECON_LOSSES)}, got {self.recon_loss!r}"
            )
        _float(self, "perceptual_weight")
        if self.perceptual_weights is not None and not isinstance(self.perceptual_weights, str):
            raise ConfigError(
                f"VQConfig.perceptual_weights must be a path (string) or null, got {self.perceptual_weights!r}"
            )
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ConfigError(
                f"VQConfig.perceptual_weight={self.perceptual_weight} needs perceptual_weights: the path of a "
                "local VGG16 safetensors file (nothing is downloaded); or set perceptual_weight=0"
            )
        _float(self, "disc_weight")
        _int(self, "disc_start", 0)
        _int(self, "disc_channels", 1)
        _int(self, "disc_layers", 1)
        _int(self, "decoder_only_from", 0)
        if self.disc_weight > 0 and self.resolution // 2**self.disc_layers < 3:
            raise ConfigError(
                f"VQConfig.disc_layers={self.disc_layers} is too deep for resolution={self.resolution}: the "
                f"PatchGAN needs resolution / 2**disc_layers >= 3 (use disc_layers <= "
                f"{max(1, int(math.log2(max(self.resolution // 3, 1))))})"
            )

    # ------------------------------------------------------------- properties
    @property
    def downsample(self) -> int:
        """Image side / code-grid side: one 2x downsample per level but the last, times space_to_depth."""
        return self.space_to_depth * 2 ** (len(self.channel_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Side of the code grid (codes per image = grid_size ** 2)."""
        return self.resolution // self.downsample

    @property
    def num_codes(self) -> int:
        """Codes actually available: codebook_size for vq / lfq, prod(fsq_levels) for fsq."""
        if self.quantizer == "fsq":
            return math.prod(self.fsq_levels)
        return self.codebook_size

    # ---------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VQConfig":
        """Inverse of `to_dict`; missing keys take their defaults, unknown keys are refused."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a VQConfig must be a mapping of settings, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ConfigError(f"unknown VQConfig key {key!r} (known: {', '.join(known)})")
        return cls(**dict(d))

    def replace(self, **overrides: Any) -> "VQConfig":
        """A validated copy with `overrides` applied; this config is left as it is."""
        known = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in known:
                raise ConfigError(f"unknown VQConfig key {key!r} (known: {', '.join(known)})")
        return dataclasses.replace(self, **overrides)


def _int(cfg: VQConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"VQConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _int_tuple(cfg: VQConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, tuple) and len(value) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        raise ConfigError(f"VQConfig.{name} must be a non-empty list of integers >= {minimum}, got {value!r}")


def _float(cfg: VQConfig, name: str) -> None:
    """A non-negative number (weights, thresholds, decays)."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"VQConfig.{name} must be a number >= 0, got {value!r}")


__all__ = ["QUANTIZERS", "RECON_LOSSES", "VQConfig"]
