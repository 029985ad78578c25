"""The interleaved (editing) layout: images in context before the text, on tiny float64 models, CPU only."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses

import pytest
import torch

from ar_model import (
    ABSENT,
    IGNORE_INDEX,
    ConfigError,
    GeneratorConfig,
    SampleConfig,
    SequenceLayout,
    absent_context,
    build_model,
    build_prefix,
    build_sequences,
    context_dropout,
    encode_text,
    generate,
    image_loss,
    loss_targets,
    padding_mask,
    trim_padding,
    unconditional_text,
)
from test_ar_model import one_thread, tok  # noqa: F401 (fixtures: one intra-op thread, the small BPE)


@pytest.fixture(scope="module")
def t2i(tok):
    return SequenceLayout.for_tokenizer(tok, codebook_size=32, grid=(3, 4), text_len=10)


@pytest.fixture(scope="module")
def edit(t2i):
    return dataclasses.replace(t2i, context_images=1, row_tokens=True)


def _text(tok, layout, prompts):
    return encode_text(tok, prompts, layout).ids


def _codes(n, layout, seed):
    return torch.randint(0, layout.codebook_size, (n, *layout.grid), generator=torch.Generator().manual_seed(seed))


# Codes the text-to-image sampler gave before the editing layout existed (commit 86fe5ac, torch 2.13 CPU,
# float64 model): the same model, prompts and seed must give them still.
BEFORE = [
    [[16, 27, 8, 23, 8, 21, 9, 19, 0, 13, 12, 22], [18, 4, 19, 23, 11, 12, 7, 8, 10, 10, 0, 5],
     [20, 25, 23, 12, 20, 19, 14, 3, 23, 14, 15, 22]],
    [[16, 27, 8, 21, 8, 21, 18, 19, 21, 31, 12, 22], [18, 4, 19, 16, 25, 12, 17, 8, 0, 1, 0, 5],
     [20, 25, 23, 12, 20, 19, 28, 30, 23, 19, 15, 22]],
]


def test_text_to_image_gives_the_same_codes_as_before(tok, t2i):
    for layout, want in zip((t2i, dataclasses.replace(t2i, row_tokens=True, mask_padding=True)), BEFORE):
        model = build_model(GeneratorConfig(layout), seed=0).double().eval()
        text = _text(tok, layout, ["a red circle above a blue square", "two green stars", ""])
        codes = generate(model, layout, text, SampleConfig(cfg_scale=3.0, temperature=1.0, seed=7))
        assert codes.flatten(1).tolist() == want
    # and a text-to-image layout is one with no images in context, also when read back from an old run
    old = {k: v for k, v in t2i.to_dict().items() if k != "context_images"}
    assert SequenceLayout.from_dict(old) == t2i and t2i.context_images == 0 and t2i.text_start == 1


def test_context_block_positions_and_ids(tok, t2i, edit):
    n = edit.image_len + 2  # [BOI] image [EOI]
    assert edit.text_start == 1 + n and edit.prefix_len == 1 + n + edit.text_len + 1
    assert edit.seq_len == dataclasses.replace(t2i, row_tokens=True).seq_len + n
    text = _text(tok, edit, ["make the red circle blue", "remove the star"])
    ctx, codes = _codes(2, edit, 1)[:, None], _codes(2, edit, 2)
    ctx[1] = ABSENT
    ids = build_sequences(text, codes, edit, ctx)
    assert ids.shape == (2, edit.seq_len)
    assert (ids[:, 1] == edit.boi_id).all() and (ids[:, n] == edit.eoi_id).all()
    assert torch.equal(ids[:, edit.text_start : edit.text_start + edit.text_len], text)
    # the context image is framed like the generated one: the same ids at the same offsets from its [BOI]
    same = build_sequences(text, ctx[:, 0].clamp(min=0), edit, ctx)
    assert torch.equal(ids[0, 2 : n], same[0, edit.prefix_len : edit.prefix_len + n - 2])
    # an absent image: [PAD] at its codes, its row tokens kept
    block = ids[1, 2 : n]
    rows = torch.arange(edit.grid_h) * (edit.grid_w + 1)
    assert (block[rows] == edit.row_id(0) + torch.arange(edit.grid_h)).all()
    assert (block[[i for i in range(len(block)) if i not in rows.tolist()]] == edit.pad_id).all()
    assert torch.equal(build_sequences(text[1:], codes[1:], edit), ids[1:])  # no context = absent
    labels = loss_targets(ids, edit)
    assert (labels[:, : edit.prefix_len] == IGNORE_INDEX).all()  # the context image is never scored
    with pytest.raises(ConfigError, match="context images must have shape"):
        build_prefix(text, edit, ctx[:, 0])
    with pytest.raises(ConfigError, match="no context images"):
        build_prefix(text, t2i, ctx)
    with pytest.raises(ConfigError, match="context_images"):
        dataclasses.replace(t2i, context_images=-1)
    dropped = context_dropout(torch.cat([ctx[:1]] * 64), 0.5, torch.Generator().manual_seed(0))
    gone = (dropped == ABSENT).flatten(1).all(1)
    assert 10 < int(gone.sum()) < 54 and (dropped[~gone] == ctx[0]).all()


def test_an_image_in_context_changes_what_follows_and_nothing_before(tok, edit):
    model = build_model(GeneratorConfig(edit), seed=0).double().eval()
    text = _text(tok, edit, ["make the red circle blue"] * 2)
    ctx, codes = _codes(1, edit, 3)[:, None].repeat(2, 1, 1, 1), _codes(1, edit, 4).repeat(2, 1, 1)
    ctx[1, 0, 1, 2] = (ctx[0, 0, 1, 2] + 1) % edit.codebook_size  # one code of the context image differs
    ids = build_sequences(text, codes, edit, ctx)
    p = int((ids[0] != ids[1]).nonzero())  # the position of that code
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.equal(logits[0, :p], logits[1, :p])  # causal: nothing before it moves
    after = (logits[0, p:] - logits[1, p:]).abs().amax(-1)
    assert (after > 1e-6).all()  # everything after it does, the generated image's positions included


@pytest.mark.parametrize("mask", [False, True])
def test_editing_sampler_cache_guidance_and_training_agree(tok, edit, mask):
    layout = dataclasses.replace(edit, mask_padding=mask)
    model = build_model(GeneratorConfig(layout), seed=0).double().eval()
    text = _text(tok, layout, ["make the red circle blue", "add a star", ""])
    ctx = _codes(3, layout, 5)[:, None]
    ctx[2] = ABSENT
    for sc in (SampleConfig.greedy(cfg_scale=2.0, image_cfg_scale=1.5),
               SampleConfig(cfg_scale=1.5, image_cfg_scale=1.0, temperature=1.2, seed=3)):
        got = generate(model, layout, text, sc, ctx)
        assert torch.equal(got, generate(model, layout, text, sc.replace(use_cache=False), ctx))
    # the greedy codes are the argmax of the three-way mix of training sequences' logits
    greedy = SampleConfig.greedy(cfg_scale=2.0, image_cfg_scale=1.5)
    codes = generate(model, layout, text, greedy, ctx)
    no_text = unconditional_text(3, layout)
    seqs = build_sequences(torch.cat([text, no_text, no_text]), codes.repeat(3, 1, 1), layout,
                           torch.cat([ctx, ctx, absent_context(3, layout)]))
    with torch.no_grad():
        logits = model(input_ids=seqs, attention_mask=padding_mask(seqs, layout)).logits
    pos = layout.code_positions()
    img = logits[:, pos - 1, layout.image_offset : layout.image_offset + layout.codebook_size]
    both, image, none = img.chunk(3)
    mix = none + (image - none) * 1.5 + (both - image) * 2.0
    assert torch.equal(mix.argmax(-1), codes.flatten(1))
    # scales 0 leave the rows with neither condition: conditioning on nothing at scale 1
    nothing = generate(model, layout, no_text, SampleConfig.greedy(cfg_scale=1.0))
    assert torch.equal(generate(model, layout, text, SampleConfig.greedy(cfg_scale=0.0, image_cfg_scale=0.0), ctx),
                       nothing)
    if mask:  # training's trimmed batch is exact with a context block before the text
        ids = build_sequences(_text(tok, layout, ["a red circle", "add a star", ""]), codes, layout, ctx)
        kept, m, positions = trim_padding(ids, layout)
        assert kept.shape[1] < ids.shape[1]
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=padding_mask(ids, layout)).logits
            trimmed = model(input_ids=kept, attention_mask=m, position_ids=positions).logits
        n = layout.image_len + 2
        assert torch.allclose(full[:, -n:], trimmed[:, -n:], atol=1e-10)


def test_tiny_editor_overfits_a_batch_of_edits(tok, edit):
    """Targets that are their context image with one code changed: the model must copy from the context."""
    layout = dataclasses.replace(edit, mask_padding=True)
    model = build_model(GeneratorConfig(layout), seed=0).train()
    src = _codes(6, layout, 6)
    tgt = src.clone()
    tgt[:, 0, 0] = (src[:, 0, 0] + 1) % layout.codebook_size
    text = _text(tok, layout, ["make the red circle blue"] * 6)
    ids = build_sequences(text, tgt, layout, src[:, None])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    torch.manual_seed(0)
    losses = []
    for _ in range(120):
        loss = image_loss(model, ids, layout)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 20, losses[::20]
    got = generate(model, layout, text, SampleConfig.greedy(cfg_scale=1.0), src[:, None])
    assert (got == tgt).float().mean() > 0.9
