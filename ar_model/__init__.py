"""ar_model: the text tokenizer, the sequence layout, the decoder-only generator and its sampler.

A library a notebook can use alone (it imports only torch, einops, transformers,
tokenizers, safetensors and the standard library):

    tok = train_text_tokenizer(captions)                        # or load_text_tokenizer(local_dir)
    layout = SequenceLayout.for_tokenizer(tok, codebook_size=256, grid=(8, 8), text_len=32)
    cfg = GeneratorConfig.from_size("tiny", layout)
    model = build_model(cfg)
    ids = build_sequences(encode_text(tok, captions, layout).ids, codes, layout)
    loss = image_loss(model, ids, layout)  # == model(input_ids=ids, labels=loss_targets(ids, layout)).loss
    codes = generate(model, layout, encode_text(tok, prompts, layout).ids, SampleConfig(cfg_scale=3.0))
    save_generator(model, cfg, tok, "runs/x/generator"); g = load_generator("runs/x/generator")
"""

from ar_model.errors import CheckpointError, ConfigError, GeneratorError
from ar_model.layout import (
    ABSENT,
    IGNORE_INDEX,
    SequenceLayout,
    TextBatch,
    absent_context,
    build_prefix,
    build_sequences,
    codes_from_tokens,
    condition_dropout,
    context_dropout,
    encode_text,
    image_block,
    image_loss,
    image_tokens,
    loss_targets,
    padding_mask,
    scored_positions,
    text_lengths,
    trim_padding,
    unconditional_text,
)
from ar_model.model import (
    SIZES,
    GeneratorConfig,
    LoadedGenerator,
    build_model,
    llama_config,
    load_generator,
    param_count,
    read_generator_config,
    save_generator,
    unwrap_model,
)
from ar_model.sampler import (
    SampleConfig,
    decode_one_token,
    filter_logits,
    generate,
    guided_image_logits,
    prefill,
    sample_from_logits,
)
from ar_model.text import SPECIAL_TOKENS, load_text_tokenizer, train_text_tokenizer

__all__ = [
    "ABSENT",
    "IGNORE_INDEX",
    "SIZES",
    "SPECIAL_TOKENS",
    "CheckpointError",
    "ConfigError",
    "GeneratorError",
    "GeneratorConfig",
    "LoadedGenerator",
    "SampleConfig",
    "SequenceLayout",
    "TextBatch",
    "absent_context",
    "build_model",
    "build_prefix",
    "build_sequences",
    "codes_from_tokens",
    "condition_dropout",
    "context_dropout",
    "decode_one_token",
    "encode_text",
    "filter_logits",
    "generate",
    "guided_image_logits",
    "image_block",
    "image_loss",
    "image_tokens",
    "llama_config",
    "load_generator",
    "load_text_tokenizer",
    "loss_targets",
    "padding_mask",
    "param_count",
    "prefill",
    "read_generator_config",
    "sample_from_logits",
    "scored_positions",
    "save_generator",
    "train_text_tokenizer",
    "text_lengths",
    "trim_padding",
    "unconditional_text",
    "unwrap_model",
]
