"""The VQ image tokenizer: images (B, 3, H, W) in [-1, 1] <-> codes (B, h, w) int64.

    encoder (conv, residual blocks, stride-2 downsampling)   (B, 3, H, W) -> (B, D, h, w)
    quantizer (vector-quantize-pytorch: VQ / FSQ / LFQ)      (B, D, h, w) -> codes (B, h, w)
    decoder (residual blocks, nearest upsampling + conv)     (B, D, h, w) -> (B, 3, H, W)

The encoder and decoder are written here by hand rather than taken from
diffusers: diffusers' Encoder/Decoder bring attention mid-blocks (costly at
every resolution on a CPU) and would make diffusers a core dependency, while
this world needs a few hundred thousand parameters. The layout follows
taming-transformers' VQGAN minus attention.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook, ema_inplace

from vqtok.config import VQConfig

# ---------------------------------------------------------------------------
# image conventions


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) (numpy or torch) -> float32 (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images of shape (B, H, W, C), got {x.dtype} {tuple(x.shape)}")
    x = rearrange(x, "b h w c -> b c h w")  # (B, C, H, W) uint8
    return x.float() / 127.5 - 1.0  # (B, C, H, W) in [-1, 1]


def tensor_to_images(t: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) in [-1, 1] -> uint8 torch tensor (B, H, W, 3); values outside are clamped."""
    if t.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(t.shape)}")
    x = ((t.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)  # (B, C, H, W)
    return rearrange(x, "b c h w -> b h w c")  # (B, H, W, C) uint8


def codebook_usage(codes: torch.Tensor, num_codes: int) -> float:
    """Share of the `num_codes` codes that occur at least once in `codes`."""
    return torch.unique(codes).numel() / num_codes


# ---------------------------------------------------------------------------
# encoder / decoder (after taming-transformers' VQGAN, without attention)


class PixelNorm(nn.Module):
    """LayerNorm over the channels at each position of (B, C, H, W), with a learned scale and shift per channel.

    Written here because torch's LayerNorm normalises trailing dimensions (channels-last) and GroupNorm(1, C)
    normalises over C, H and W together; this one looks at no other position, so a whole photograph is
    normalised as its training crops were (VQConfig.norm = "pixel").
    """

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.LayerNorm(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return rearrange(self.norm(rearrange(x, "b c h w -> b h w c")), "b h w c -> b c h w")


def make_norm(kind: str, groups: int, ch: int) -> nn.Module:
    """The conv nets' normalisation (VQConfig.norm): GroupNorm over the whole map, or PixelNorm per position."""
    return PixelNorm(ch) if kind == "pixel" else nn.GroupNorm(groups, ch)


class ResBlock(nn.Module):
    """Norm (GroupNorm by default) -> SiLU -> conv3x3, twice, plus a (1x1-projected) skip."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, norm: str = "group"):
        super().__init__()
        self.norm1 = make_norm(norm, groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(norm, groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W)
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        return self.skip(x) + h  # (B, C_out, H, W)


class Downsample(nn.Module):
    """Stride-2 conv3x3 (padding 1): (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    """Nearest 2x upsampling then conv3x3 (no checkerboard artefacts of transposed convs).

    The conv already maps to the next (larger-grid) level's width: taming keeps the
    width here, but at full resolution that conv would be the decoder's costliest.
    """

    def __init__(self, ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        return self.conv(x)  # (B, C_out, 2H, 2W)


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> (B, latent_dim, H / downsample, W / downsample)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mult]
        self.fold = cfg.space_to_depth  # s x s pixels -> channels first (VQConfig.space_to_depth)
        self.conv_in = nn.Conv2d(cfg.in_channels * self.fold**2, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        ch = widths[0]
        for i, width in enumerate(widths):
            blocks: list[nn.Module] = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(ch, width, cfg.norm_groups, cfg.norm))
                ch = width
            if i < len(widths) - 1:  # every level but the last halves the grid
                blocks.append(Downsample(ch))
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = make_norm(cfg.norm, cfg.norm_groups, ch)
        self.conv_out = nn.Conv2d(ch, cfg.latent_dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W)
        x = F.pixel_unshuffle(x, self.fold) if self.fold > 1 else x  # (B, C_in * s^2, H / s, W / s)
        h = self.conv_in(x)  # (B, W_0, H / s, W / s); s = 1 below
        for level in self.levels:  # level i: res blocks to width W_i, then a /2 except at the last level
            h = level(h)  # (B, W_i, H / 2^i, W / 2^i) -> (B, W_i, H / 2^(i+1), W / 2^(i+1)); last: grid kept
        h = F.silu(self.norm_out(h))  # (B, W_last, h, w)
        return self.conv_out(h)  # (B, D, h, w)


class PatchEncoder(nn.Module):
    """(B, in_channels, H, W) -> (B, latent_dim, H / d, W / d), each output from its own d x d patch alone.

    A d x d stride-d conv embeds every patch (ViT's patch embedding), then per-position residual MLPs
    (1x1 convs, no normalisation across positions) map it to the latent: no information crosses patches.
    Width base_channels * channel_mult[-1]; num_res_blocks residual MLPs per level of channel_mult.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        width = cfg.base_channels * cfg.channel_mult[-1]
        d = cfg.downsample
        self.embed = nn.Conv2d(cfg.in_channels, width, d, stride=d)
        self.blocks = nn.ModuleList([_PointMLP(width) for _ in range(cfg.num_res_blocks * len(cfg.channel_mult))])
        self.out = nn.Conv2d(width, cfg.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C_in, H, W)
        h = self.embed(x)  # (B, W, H / d, W / d)
        for block in self.blocks:
            h = block(h)
        return self.out(F.silu(h))  # (B, D, h, w)


class PatchDecoder(nn.Module):
    """(B, latent_dim, h, w) -> (B, in_channels, h * d, w * d): each code decoded to its own patch alone."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        width = cfg.base_channels * cfg.channel_mult[-1]
        d = cfg.downsample
        self.inp = nn.Conv2d(cfg.latent_dim, width, 1)
        self.context = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1) for _ in range(cfg.patch_context)])
        self.blocks = nn.ModuleList([_PointMLP(width) for _ in range(cfg.num_res_blocks * len(cfg.channel_mult))])
        self.unembed = nn.ConvTranspose2d(width, cfg.in_channels, d, stride=d)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, D, h, w)
        h = self.inp(z)
        for conv in self.context:  # patch_context: each sees its 3x3 neighbourhood of codes
            h = h + conv(F.silu(h))
        for block in self.blocks:
            h = block(h)
        return self.unembed(F.silu(h))  # (B, C_in, H, W)


class _PointMLP(nn.Module):
    """A residual two-layer MLP applied at every position on its own (1x1 convs)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(width, 2 * width, 1), nn.Conv2d(2 * width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(F.silu(x))))


class Decoder(nn.Module):
    """(B, latent_dim, h, w) -> (B, in_channels, h * downsample, w * downsample); the encoder mirrored."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [(cfg.decoder_channels or cfg.base_channels) * m for m in cfg.channel_mult]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_dim, ch, 3, padding=1)
        self.levels = nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks: list[nn.Module] = []
            for _ in range(cfg.decoder_res_blocks or cfg.num_res_blocks):
                blocks.append(ResBlock(ch, widths[i], cfg.norm_groups, cfg.norm))
                ch = widths[i]
            if i > 0:  # every level but the first (in image order) doubles the grid
                blocks.append(Upsample(ch, widths[i - 1]))
                ch = widths[i - 1]
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = make_norm(cfg.norm, cfg.norm_groups, ch)
        self.fold = cfg.space_to_depth
        self.conv_out = nn.Conv2d(ch, cfg.in_channels * self.fold**2, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (B, D, h, w)
        h = self.conv_in(z)  # (B, W_last, h, w)
        for level in self.levels:  # deepest level first: res blocks at W_i, then x2 (to width W_(i-1)) but at i = 0
            h = level(h)  # (B, W_i, h * 2^k, w * 2^k) -> (B, W_(i-1), h * 2^(k+1), w * 2^(k+1)); ends (B, W_0, H, W)
        h = F.silu(self.norm_out(h))  # (B, W_0, H / s, W / s); s = space_to_depth, 1 by default
        out = self.conv_out(h)  # (B, C_in * s^2, H / s, W / s)
        return F.pixel_shuffle(out, self.fold) if self.fold > 1 else out  # (B, C_in, H, W), ~[-1, 1] once trained


# ---------------------------------------------------------------------------
# quantizer


class SparseCodebook(Codebook):
    """vector-quantize-pytorch's EMA codebook with its training step done by index instead of one-hot.

    In training the library builds an (N, K) one-hot matrix of the chosen codes and multiplies by it twice (the
    quantized vectors; each code's sum of assigned vectors for the EMA): at 4,096 vectors a batch and 1,024 codes
    that was ~40% of the cpu-photo preset's CPU step (0.137 -> 0.082 s), for what a gather, a bincount and an
    index_add do in a few milliseconds; and under CPU bf16 autocast it chose codes from bf16 similarities (3-5% not
    the nearest), where this one works in fp32. This class reuses everything else of the library (its buffers and state-dict keys, k-means init,
    EMA update, dead-code replacement, DDP sync) and computes the same values (tested against the library's path);
    any option outside the plain case (masks, top-k, affine or learnable codebooks, stochastic codes, several
    codebooks, Euclidean distance) falls back to the library's own forward.
    """

    def _plain(self, x, mask, codebook_transform_fn, ema_update_weight, accum_ema_update, topk) -> bool:
        stochastic = getattr(self.gumbel_sample, "keywords", {}).get("stochastic", True)
        return (x.ndim < 4 and mask is None and codebook_transform_fn is None and ema_update_weight is None
                and not accum_ema_update and topk is None and not stochastic and not self.affine_param
                and not self.learnable_codebook and self.vq_bridge is None and self.embed.shape[0] == 1
                and self.use_cosine_sim)  # the tokenizer's VQ (Quantizer) is always cosine

    def forward(self, x, sample_codebook_temp=None, mask=None, freeze_codebook=False, codebook_transform_fn=None,
                ema_update_weight=None, accum_ema_update=False, ema_update=None, topk=None, update_usage=True):
        if not self._plain(x, mask, codebook_transform_fn, ema_update_weight, accum_ema_update, topk):
            return super().forward(x, sample_codebook_temp, mask, freeze_codebook, codebook_transform_fn,
                                   ema_update_weight, accum_ema_update, ema_update, topk, update_usage)
        with torch.autocast(x.device.type, enabled=False):  # fp32: under bf16 autocast near-equal codes tie
            return self._forward(x, freeze_codebook, ema_update, update_usage)

    def _forward(self, x, freeze_codebook, ema_update, update_usage):
        ema_update = self.ema_update if ema_update is None else ema_update
        lead = x.shape[:-1]  # (B, N)
        flat = x.float().reshape(-1, x.shape[-1])  # (M, d), M = B * N
        self.init_embed_(flat[None])
        embed = self.embed.detach().float()[0]  # (K, d)
        dist = flat @ embed.T  # (M, K) cosine similarity (inputs and codes are unit vectors)
        ind = dist.argmax(dim=-1)  # (M,)
        quantize = embed[ind]  # (M, d)
        if self.training and update_usage and not freeze_codebook and (ema_update or self.has_dead_code_replacement):
            # the library's track_cluster_size_and_embed_avg, from indices
            cluster_size = torch.bincount(ind, minlength=self.codebook_size).to(flat.dtype)[None]  # (1, K)
            embed_sum = flat.new_zeros(self.codebook_size, flat.shape[-1]).index_add_(0, ind, flat)[None]  # (1, K, d)
            self.all_reduce_fn(cluster_size)
            self.all_reduce_fn(embed_sum)
            ema_inplace(self.cluster_size, cluster_size, self.decay)
            ema_inplace(self.embed_avg, embed_sum, self.decay)
            if ema_update and not self.manual_ema_update:
                self.update_ema()
            self.expire_codes_(flat[None])
        return quantize.reshape(*lead, -1), ind.reshape(lead), dist.reshape(1, *lead, -1)  # dist as the library


class QuantizeOutput(NamedTuple):
    quantized: torch.Tensor  # (B, D, h, w) float, straight-through in training
    codes: torch.Tensor  # (B, h, w) int64 in [0, num_codes)
    loss: torch.Tensor  # scalar: commitment (vq), entropy + commitment (lfq), 0 (fsq)


class Quantizer(nn.Module):
    """One interface over vector-quantize-pytorch's VectorQuantize, FSQ and LFQ.

    Every quantizer is fed sequences (B, h*w, D), never image maps: with
    `accept_image_fmap=True` and `codebook_dim != dim`, VectorQuantize's
    `get_output_from_indices` projects along the wrong axis, and FSQ / LFQ
    treat 4-D input as channels-first. `codes_to_latent(codes)` equals the
    forward pass's `quantized` in eval mode (tested for all three).

    Under DDP, VectorQuantize syncs its codebook (EMA updates, k-means init)
    across processes by default; extract codes in eval mode, where no update runs.
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.kind = cfg.quantizer
        self.num_codes = cfg.num_codes
        if cfg.quantizer == "vq":
            self.impl = VectorQuantize(
                dim=cfg.latent_dim,
                codebook_size=cfg.codebook_size,
                codebook_dim=cfg.codebook_dim,  # project D -> codebook_dim before the lookup (LlamaGen)
                use_cosine_sim=True,  # l2-normalised inputs and codes
                decay=cfg.ema_decay,  # codebook learned by EMA, not by gradients
                threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
                kmeans_init=cfg.kmeans_init,
            )
            self.impl._codebook.__class__ = SparseCodebook  # the same codebook, trained by index (its docstring)
        elif cfg.quantizer == "fsq":
            self.impl = FSQ(levels=list(cfg.fsq_levels), dim=cfg.latent_dim, channel_first=False)
        elif cfg.quantizer == "lfq":
            self.impl = LFQ(
                dim=cfg.latent_dim,
                codebook_size=cfg.codebook_size,
                entropy_loss_weight=cfg.lfq_entropy_weight,
                commitment_loss_weight=cfg.commitment_weight,  # the library's default is 0
                channel_first=False,  # we always pass (B, N, D)
            )
        else:  # VQConfig.validate refuses this earlier; kept for a config built around it
            raise ValueError(f"unknown quantizer {cfg.quantizer!r}")

    def forward(self, z: torch.Tensor) -> QuantizeOutput:  # z: (B, D, h, w)
        h, w = z.shape[-2:]
        seq = rearrange(z, "b d h w -> b (h w) d")  # (B, N, D)
        if self.kind == "vq":
            q, idx, loss = self.impl(seq)  # (B, N, D), (B, N) int64, scalar
        elif self.kind == "fsq":
            q, idx = self.impl(seq)  # (B, N, D), (B, N) int32; FSQ has no loss
            loss = seq.new_zeros(())  # scalar 0
        else:
            q, idx, loss = self.impl(seq)  # (B, N, D), (B, N) int64, scalar entropy + commitment
        quantized = rearrange(q, "b (h w) d -> b d h w", h=h, w=w)  # (B, D, h, w)
        codes = rearrange(idx.long(), "b (h w) -> b h w", h=h, w=w)  # (B, h, w) int64
        return QuantizeOutput(quantized, codes, loss.reshape(()))

    def quantize(self, z: torch.Tensor) -> QuantizeOutput:
        """Alias of forward: (B, D, h, w) -> QuantizeOutput."""
        return self(z)

    def nearest_codes(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """The `k` codes nearest each position of z (B, D, h, w), nearest first: (B, h, w, k) int64 (vq only).

        The first is the code `forward` picks (the same projection, normalisation and cosine similarity, in fp32);
        the others are what `vqtok.search.search_codes` tries in its place.
        """
        if self.kind != "vq":
            raise ValueError(f"nearest_codes needs the vq quantizer (codes with a distance), not {self.kind!r}")
        h = z.shape[-2]
        seq = rearrange(z, "b d h w -> b (h w) d").float()  # (B, N, D)
        with torch.autocast(z.device.type, enabled=False):
            x = self.impl._codebook.transform_input(self.impl.project_in(seq))  # (B, N, d) unit vectors
            sim = x @ self.impl._codebook.embed[0].float().T  # (B, N, K) cosine similarity
        top = sim.topk(min(k, self.num_codes), dim=-1).indices  # (B, N, k)
        return rearrange(top, "b (h w) k -> b h w k", h=h)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:  # codes: (B, h, w) int
        h, w = codes.shape[-2:]
        idx = rearrange(codes.long(), "b h w -> b (h w)")  # (B, N)
        if self.kind == "vq":
            q = self.impl.get_output_from_indices(idx)  # (B, N, D): lookup, then project_out
        else:
            q = self.impl.indices_to_codes(idx)  # (B, N, D): FSQ / LFQ codes, then project_out
        return rearrange(q, "b (h w) d -> b d h w", h=h, w=w)  # (B, D, h, w)


# ---------------------------------------------------------------------------
# the tokenizer


class EncodeOutput(NamedTuple):
    codes: torch.Tensor  # (B, h, w) int64
    quantized: torch.Tensor  # (B, D, h, w) the decoder's input
    loss: torch.Tensor  # scalar quantizer loss (0 in eval mode)


class ForwardOutput(NamedTuple):
    recon: torch.Tensor  # (B, 3, H, W) reconstruction, ~[-1, 1]
    codes: torch.Tensor  # (B, h, w) int64
    loss: torch.Tensor  # scalar quantizer loss


class VQTokenizer(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> codes (B, h, w) int64, h = w = cfg.grid_size."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = PatchEncoder(cfg) if cfg.architecture == "patch" else Encoder(cfg)
        self.quantizer = Quantizer(cfg)
        self.decoder = PatchDecoder(cfg) if cfg.architecture == "patch" else Decoder(cfg)

    def _check_images(self, images: torch.Tensor) -> None:
        ok = images.ndim == 4 and images.shape[1] == self.cfg.in_channels and images.is_floating_point()
        ok = ok and images.shape[2] % self.cfg.downsample == 0 and images.shape[3] % self.cfg.downsample == 0
        if not ok:
            raise ValueError(
                f"expected float images (B, {self.cfg.in_channels}, H, W) in [-1, 1] with H, W divisible by "
                f"{self.cfg.downsample}, got {images.dtype} {tuple(images.shape)} "
                "(images_to_tensor converts uint8 (B, H, W, 3))"
            )

    def encode(self, images: torch.Tensor) -> EncodeOutput:
        self._check_images(images)
        z = self.encoder(images)  # (B, D, h, w)
        q = self.quantizer(z)  # quantized (B, D, h, w), codes (B, h, w)
        return EncodeOutput(q.codes, q.quantized, q.loss)

    def decode_latent(self, quantized: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) quantized latent -> (B, 3, H, W)."""
        return self.decoder(quantized)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) integer codes in [0, num_codes) -> images (B, 3, H, W), ~[-1, 1]."""
        if codes.ndim != 3 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"expected integer codes of shape (B, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cfg.num_codes):
            raise ValueError(
                f"codes must lie in [0, {self.cfg.num_codes}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        z = self.quantizer.codes_to_latent(codes)  # (B, D, h, w)
        return self.decoder(z)  # (B, 3, H, W)

    def forward(self, images: torch.Tensor) -> ForwardOutput:  # images: (B, 3, H, W)
        enc = self.encode(images)  # codes (B, h, w), quantized (B, D, h, w) straight-through
        recon = self.decoder(enc.quantized)  # (B, 3, H, W)
        return ForwardOutput(recon, enc.codes, enc.loss)


__all__ = [
    "Decoder",
    "EncodeOutput",
    "Encoder",
    "ForwardOutput",
    "QuantizeOutput",
    "Quantizer",
    "VQTokenizer",
    "codebook_usage",
    "images_to_tensor",
    "tensor_to_images",
]
