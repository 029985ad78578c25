"""The tokenizer's training loss: reconstruction + quantizer + perceptual + PatchGAN.

`TokenizerLoss` is built for ONE optimizer over the tokenizer's and the
discriminator's parameters and ONE backward per step:

* the generator's adversarial term runs the discriminator with detached
  parameters (`torch.func.functional_call`), so it sends gradients to the
  tokenizer only;
* the discriminator's hinge loss runs on `recon.detach()` and the real images,
  so it sends gradients to the discriminator only.

Before `disc_start` neither term is computed and the discriminator's parameters
get no gradient at all (grad None). Under DDP that means unused parameters
until `disc_start`: wrap with `find_unused_parameters=True` or keep the
discriminator out of the DDP module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from vqtok.config import VQConfig
from vqtok.errors import CheckpointError
from vqtok.model import ForwardOutput, codebook_usage

# ---------------------------------------------------------------------------
# PatchGAN discriminator


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, ch), ch)


class PatchDiscriminator(nn.Module):
    """PatchGAN: (B, 3, H, W) -> logits (B, 1, H', W'), one per overlapping patch.

    after: taming-transformers' NLayerDiscriminator (itself after pix2pix), with
    GroupNorm instead of BatchNorm: BatchNorm's running statistics would make the
    real / fake / generator calls stateful and differ between train and eval.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers):  # stride-2 layers, width doubling up to 8x
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride=2, padding=1, bias=False),
                _norm(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(channels * prev, channels * mult, 4, stride=1, padding=1, bias=False),
            _norm(channels * mult),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1),  # one logit per patch
        ]
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, H, W)
        return self.main(x)  # (B, 1, H / 2^n_layers - 2, W / 2^n_layers - 2)


def _init_weights(m: nn.Module) -> None:
    # after: taming-transformers' weights_init (DCGAN init)
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: push real logits above +1, fake ones below -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: raise the discriminator's logits on reconstructions."""
    return -logits_fake.mean()


# ---------------------------------------------------------------------------
# perceptual loss (VGG16 features from a local file)

# torchvision's vgg16 `features`: numbers are conv widths, "M" a 2x2 max-pool. Each conv
# is followed by a ReLU, so conv k sits at index features.N in torchvision's numbering.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# features.N indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS taps)
_VGG16_TAPS = (3, 8, 15, 22, 29)


def _vgg16_convs() -> list[tuple[int, int, int]]:
    """(features index, in channels, out channels) of each conv in torchvision's vgg16."""
    convs, idx, ch = [], 0, 3
    for item in _VGG16_LAYOUT:
        if item == "M":
            idx += 1  # max-pool
        else:
            convs.append((idx, ch, int(item)))
            ch = int(item)
            idx += 2  # conv, ReLU
    return convs


def vgg16_feature_shapes() -> dict[str, tuple[int, ...]]:
    """The tensors a weights file for PerceptualLoss must hold: torchvision's `features.N.weight/bias`."""
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, cin, cout in _vgg16_convs():
        shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{idx}.bias"] = (cout,)
    return shapes


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on VGG16 features, without LPIPS' learned linear heads.

    The weights come from a LOCAL safetensors file with torchvision's vgg16 names
    (`features.0.weight`, ..., `features.28.bias`; `classifier.*` tensors, if
    the file holds the whole network, are ignored). Nothing is downloaded.
    The distance: features at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are
    unit-normalised over channels; per layer, the squared difference is summed
    over channels and averaged over positions and batch; layers are summed.
    Identical images give exactly 0.

    The weights are kept as non-persistent buffers, not parameters: frozen, they
    move with `.to()` but stay out of optimizers, EMA and training checkpoints.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = Path(weights_path)
        self.weights_path = str(path)
        if not path.is_file():
            raise CheckpointError(f"perceptual weights file '{path}' does not exist (a VGG16 safetensors file)")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read perceptual weights '{path}' as safetensors: {e}") from e
        expected = vgg16_feature_shapes()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected and not k.startswith("classifier.")]
        wrong = [f"{k} {tuple(state[k].shape)} != {v}" for k, v in expected.items() if k in state and
                 tuple(state[k].shape) != v]
        if missing or unexpected or wrong:
            problems = []
            if missing:
                problems.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
            if unexpected:
                problems.append(f"unexpected {len(unexpected)} tensor(s), e.g. {', '.join(unexpected[:3])}")
            if wrong:
                problems.append(f"wrong shape: {'; '.join(wrong[:3])}")
            raise CheckpointError(
                f"perceptual weights '{path}' do not match torchvision's vgg16 `features.N.weight/bias` "
                f"layout: {'; '.join(problems)}"
            )
        self._convs = [idx for idx, _, _ in _vgg16_convs()]
        for idx in self._convs:
            self.register_buffer(f"w{idx}", state[f"features.{idx}.weight"].float(), persistent=False)
            self.register_buffer(f"b{idx}", state[f"features.{idx}.bias"].float(), persistent=False)
        # ImageNet statistics of torchvision's VGG16, for inputs mapped from [-1, 1] to [0, 1]
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:  # x: (B, 3, H, W) in [-1, 1]
        h = ((x + 1.0) / 2.0 - self.mean) / self.std  # (B, 3, H, W) ImageNet-normalised
        taps, idx = [], 0
        for item in _VGG16_LAYOUT:
            if item == "M":
                h = F.max_pool2d(h, 2)  # (B, C, H/2, W/2)
                idx += 1
                continue
            h = F.relu(F.conv2d(h, getattr(self, f"w{idx}"), getattr(self, f"b{idx}"), padding=1))  # (B, C', H, W)
            if idx + 1 in _VGG16_TAPS:  # the ReLU's index in torchvision's numbering
                taps.append(h)
            idx += 2
            if len(taps) == len(_VGG16_TAPS):
                break  # the last max-pool is not needed
        return taps  # 5 maps (B, C_k, H / 2^k, W / 2^k)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar distance between images x and target, both (B, 3, H, W) in [-1, 1]."""
        fx = self.features(x)
        with torch.no_grad():  # the target needs no gradient
            ft = self.features(target)
        loss = x.new_zeros(())
        for a, b in zip(fx, ft):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)  # (B, C, h, w) unit vectors per position
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            loss = loss + (a - b).pow(2).sum(dim=1).mean()  # sum over channels, mean over B, h, w
        return loss


# ---------------------------------------------------------------------------
# the whole loss


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar to minimise over tokenizer + discriminator parameters
    metrics: dict[str, float]  # recon, quant, usage (+ perc, g_adv, d_loss when active)


class TokenizerLoss(nn.Module):
    """recon (l1 / l2) + quantizer loss + perceptual_weight * perceptual + disc_weight * PatchGAN.

    `self.discriminator` exists only when disc_weight > 0 (its parameters go to
    the optimizer with the tokenizer's: see `trainable_parameters`);
    `self.perceptual` only when perceptual_weight > 0 (frozen).
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.discriminator: PatchDiscriminator | None = None
        self.perceptual: PerceptualLoss | None = None
        if cfg.disc_weight > 0:
            self.discriminator = PatchDiscriminator(cfg.in_channels, cfg.disc_channels, cfg.disc_layers)
        if cfg.perceptual_weight > 0:
            assert cfg.perceptual_weights is not None  # VQConfig.validate guarantees it
            self.perceptual = PerceptualLoss(cfg.perceptual_weights)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The discriminator's parameters (empty without one)."""
        return [] if self.discriminator is None else list(self.discriminator.parameters())

    def adversarial_active(self, step: int) -> bool:
        return self.discriminator is not None and int(step) >= self.cfg.disc_start

    def generator_adv_loss(self, recon: torch.Tensor) -> torch.Tensor:
        """Hinge generator loss; gradients reach `recon` but never the discriminator's parameters."""
        assert self.discriminator is not None
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        logits_fake = torch.func.functional_call(self.discriminator, frozen, (recon,))  # (B, 1, h', w')
        return hinge_g_loss(logits_fake)

    def discriminator_loss(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Hinge discriminator loss; gradients reach the discriminator's parameters only."""
        assert self.discriminator is not None
        logits_real = self.discriminator(images.detach())  # (B, 1, h', w')
        logits_fake = self.discriminator(recon.detach())  # (B, 1, h', w')
        return hinge_d_loss(logits_real, logits_fake)

    def decoder_only(self, step: int) -> bool:
        """Whether `step` is in the decoder fine-tuning phase (VQConfig.decoder_only_from)."""
        return 0 < self.cfg.decoder_only_from <= int(step)

    def forward(self, tokenizer: nn.Module, images: torch.Tensor, step: int) -> LossOutput:
        cfg = self.cfg
        if self.decoder_only(step):  # frozen encoder and codebook: codes without gradients or EMA updates
            quantizer_mode = tokenizer.quantizer.training
            tokenizer.quantizer.eval()  # no EMA update, no dead-code refresh
            with torch.no_grad():
                enc = tokenizer.encode(images)  # codes (B, h, w), quantized (B, D, h, w)
            tokenizer.quantizer.train(quantizer_mode)
            out = ForwardOutput(tokenizer.decode_latent(enc.quantized), enc.codes, images.new_zeros(()))
        else:
            out = tokenizer(images)  # ForwardOutput: recon (B, 3, H, W), codes (B, h, w), loss
        if cfg.recon_loss == "l1":
            recon = (out.recon - images).abs().mean()
        else:
            recon = (out.recon - images).pow(2).mean()
        total = recon + out.loss
        metrics = {
            "recon": float(recon.detach()),
            "quant": float(out.loss.detach()),
            "usage": codebook_usage(out.codes, cfg.num_codes),  # share of codes used in this batch
        }
        if self.perceptual is not None:
            perc = self.perceptual(out.recon, images)
            total = total + cfg.perceptual_weight * perc
            metrics["perc"] = float(perc.detach())
        if self.adversarial_active(step):
            g_adv = self.generator_adv_loss(out.recon)
            d_loss = self.discriminator_loss(images, out.recon)
            # d_loss is unweighted (taming's disc_factor is on/off): its gradient reaches only
            # the discriminator, so a weight there would only rescale the discriminator's step.
            total = total + cfg.disc_weight * g_adv + d_loss
            metrics["g_adv"] = float(g_adv.detach())
            metrics["d_loss"] = float(d_loss.detach())
        return LossOutput(total, metrics)


__all__ = [
    "LossOutput",
    "PatchDiscriminator",
    "PerceptualLoss",
    "TokenizerLoss",
    "hinge_d_loss",
    "hinge_g_loss",
    "vgg16_feature_shapes",
]
