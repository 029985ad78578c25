"""vqtok: the VQ image tokenizer of Tessera (images <-> grids of discrete codes).

    from vqtok import VQConfig, VQTokenizer, images_to_tensor, load_tokenizer
    tok = VQTokenizer(VQConfig(quantizer="fsq"))
    codes = tok.encode(images_to_tensor(uint8_images)).codes   # (B, h, w) int64
    images = tok.decode(codes)                                  # (B, 3, H, W) in ~[-1, 1]

    # codes checked against the decoder (vqtok.search): decode closer to the images, the same kind of codes;
    # for vq tokenizers with a local decoder, e.g. a cpu-photo run's (FSQ, LFQ and GroupNorm nets are refused)
    from vqtok.search import search_codes
    photo_tok = load_tokenizer("runs/photo/tokenizer")
    codes = search_codes(photo_tok, images_to_tensor(uint8_images))

A library: it imports only torch, einops, vector_quantize_pytorch, safetensors
and numpy, never the rest of Tessera.
"""

from vqtok.config import QUANTIZERS, RECON_LOSSES, VQConfig
from vqtok.errors import CheckpointError, ConfigError, TokenizerError
from vqtok.io import load_tokenizer, read_tokenizer_config, save_tokenizer, weights_path
from vqtok.losses import (
    LossOutput,
    PatchDiscriminator,
    PerceptualLoss,
    TokenizerLoss,
    hinge_d_loss,
    hinge_g_loss,
    vgg16_feature_shapes,
)
from vqtok.model import (
    Decoder,
    EncodeOutput,
    Encoder,
    ForwardOutput,
    QuantizeOutput,
    Quantizer,
    VQTokenizer,
    codebook_usage,
    images_to_tensor,
    tensor_to_images,
)

__all__ = [
    "QUANTIZERS",
    "RECON_LOSSES",
    "CheckpointError",
    "ConfigError",
    "TokenizerError",
    "Decoder",
    "EncodeOutput",
    "Encoder",
    "ForwardOutput",
    "LossOutput",
    "PatchDiscriminator",
    "PerceptualLoss",
    "QuantizeOutput",
    "Quantizer",
    "TokenizerLoss",
    "VQConfig",
    "VQTokenizer",
    "codebook_usage",
    "hinge_d_loss",
    "hinge_g_loss",
    "images_to_tensor",
    "load_tokenizer",
    "read_tokenizer_config",
    "save_tokenizer",
    "tensor_to_images",
    "vgg16_feature_shapes",
    "weights_path",
]
