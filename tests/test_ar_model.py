"""ar_model: text tokenizer, sequence layout, generator model and sampler -- invariants on tiny models, CPU only."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is ever downloaded; a stray hub id must fail, not fetch

import ast
import itertools
import math
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import ar_model
from ar_model import (
    IGNORE_INDEX,
    SIZES,
    CheckpointError,
    ConfigError,
    GeneratorConfig,
    SampleConfig,
    SequenceLayout,
    build_model,
    build_prefix,
    build_sequences,
    codes_from_tokens,
    condition_dropout,
    encode_text,
    filter_logits,
    generate,
    image_loss,
    image_tokens,
    llama_config,
    load_generator,
    load_text_tokenizer,
    loss_targets,
    param_count,
    sample_from_logits,
    save_generator,
    scored_positions,
    train_text_tokenizer,
    unconditional_text,
)

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
RELATIONS = ["above", "below", "left of", "right of"]


def _captions() -> list[str]:
    caps = []
    for c1, s1, rel, c2, s2 in itertools.product(COLOURS, SHAPES, RELATIONS, COLOURS[:3], SHAPES[:2]):
        caps.append(f"a {c1} {s1} {rel} a {c2} {s2}")
    caps += [f"Two {c} {s}s" for c in COLOURS for s in SHAPES]
    return caps[::3]  # a few hundred


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 intra-op threads, and on a shared 2-core machine the threads'
    barriers stall behind other processes (an 80-step train loop measured 2-3 s with 1 thread,
    20-50 s with 2 under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return train_text_tokenizer(_captions(), vocab_size=512)


@pytest.fixture(scope="module")
def layout(tok):
    # a non-square grid catches any h / w mix-up between the sequence and the grid
    return SequenceLayout.for_tokenizer(tok, codebook_size=32, grid=(3, 4), text_len=10)


@pytest.fixture(scope="module")
def row_layout(layout):
    return dataclasses.replace(layout, row_tokens=True)


@pytest.fixture(scope="module")
def model64(layout):
    """Tiny model in float64, so cache-vs-recompute comparisons are exact up to far below any logit gap."""
    return build_model(GeneratorConfig(layout), seed=0).double().eval()


def _text(tok, layout, prompts):
    return encode_text(tok, prompts, layout).ids


# --------------------------------------------------------------------------- text tokenizer
def test_tokenizer_round_trips_and_encodes_any_unicode(tok):
    assert len(tok) <= 512
    assert [tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[BOS]", "[EOS]", "[UNK]")] == [0, 1, 2, 3]
    assert tok.pad_token == "[PAD]" and tok.bos_token == "[BOS]" and tok.eos_token == "[EOS]" and tok.unk_token == "[UNK]"
    for text in ["a red circle above a blue square", "Two GREEN stars, left of a star!"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text.lower()
    assert tok("", add_special_tokens=False)["input_ids"] == []
    for text in ["ß✓", "красный круг над синим квадратом", "红色的圆在蓝色方块上面", "🙂 émoji"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids and tok.unk_token_id not in ids  # byte-level: no character is unknown
        assert tok.decode(ids) == text.lower()


def test_tokenizer_saves_and_loads_from_a_local_dir(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_text_tokenizer(tmp_path / "tok")
    assert len(loaded) == len(tok)
    text = "a purple star below a red triangle ß✓"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]

    with pytest.raises(CheckpointError, match="nowhere"):
        load_text_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty"):
        load_text_tokenizer(tmp_path / "empty")


def test_tokenizer_vocab_size_is_checked():
    with pytest.raises(ConfigError, match="vocab_size"):
        train_text_tokenizer(["a"], vocab_size=100)


def test_place_phrases_are_one_token_each():
    """data.place_tokens: each multi-word place name is one id wherever it stands as whole words, in any case;
    the longest name wins over one inside it; a name inside a longer word is not matched; the text decodes
    back with its spaces, and the tokenizer saves and loads with its phrases."""
    from train.data.grammar import place_phrases

    caps = _captions()
    phrases = place_phrases(4)
    assert {"upper center left", "center left", "bottom right"} <= set(phrases)
    assert all(len(p.split()) > 1 for p in phrases)
    plain = train_text_tokenizer(caps, vocab_size=300)
    placed = train_text_tokenizer(caps, vocab_size=300, phrases=phrases)
    assert len(placed) == len(plain) + len(phrases)
    ids = placed("A red circle in the Upper Center Left, a square in the center left column",
                 add_special_tokens=False)["input_ids"]
    pieces = placed.convert_ids_to_tokens(ids)
    assert "upper center left" in pieces and "center left" in pieces
    assert "Ġupper" not in pieces and "Ġcenter" not in pieces
    assert placed.decode(ids) == "a red circle in the upper center left, a square in the center left column"
    assert "center left" not in placed.tokenize("the center leftmost")  # whole words only
    assert placed("a red circle", add_special_tokens=False)["input_ids"] == plain("a red circle",
                                                                                  add_special_tokens=False)["input_ids"]
    with pytest.raises(ConfigError, match="phrases"):
        train_text_tokenizer(caps, vocab_size=300, phrases=["left"])  # one word: BPE's job
    with pytest.raises(ConfigError, match="phrases"):
        train_text_tokenizer(caps, vocab_size=300, phrases="top left")


def test_encode_text_pads_truncates_and_flags(tok, layout):
    long = " ".join(["a red circle above a blue square"] * 4)
    batch = encode_text(tok, ["a red circle", "", long, "ß✓"], layout)
    assert batch.ids.shape == (4, layout.text_len) and batch.ids.dtype == torch.long
    assert batch.truncated == [False, False, True, False]
    n = len(tok("a red circle", add_special_tokens=False)["input_ids"])
    assert batch.ids[0, :n].tolist() == tok("a red circle", add_special_tokens=False)["input_ids"]
    assert (batch.ids[0, n:] == layout.pad_id).all()
    assert torch.equal(batch.ids[1], unconditional_text(1, layout)[0])  # empty prompt = unconditional form
    text_part = batch.ids[batch.ids != layout.pad_id]
    assert (text_part < layout.text_vocab).all()
    assert encode_text(tok, [], layout).ids.shape == (0, layout.text_len)


def test_encode_text_refuses_a_layout_for_another_tokenizer(tok):
    small = SequenceLayout(text_len=8, text_vocab=10, codebook_size=4, grid=(2, 2))
    with pytest.raises(ConfigError, match="text_vocab"):
        encode_text(tok, ["a red circle"], small)


def test_glyph_slots_spell_each_string_at_fixed_positions(tok):
    """With glyph slots the text block opens with the prompt's strings a character a slot (quoted strings and
    digit runs, in order, 4 slots each), then the caption: a string's i-th character sits at the same position
    whatever the caption says around it; prompts without strings leave the slots [PAD]."""
    from ar_model.layout import text_lengths

    layout = SequenceLayout.for_tokenizer(tok, codebook_size=16, grid=(2, 2), text_len=48, mask_padding=True,
                                          glyph_slots=8)
    prompts = ['the word "TAXI" left of a red circle', 'a sign saying "TAXI" in the top row',
               'the number 42 and the word "A7"', 'a red circle', '', 'a sign that reads "OK"']
    ids = encode_text(tok, prompts, layout).ids
    pad = layout.pad_id

    def spell(s):
        out = [tok(c, add_special_tokens=False)["input_ids"] for c in s]
        assert all(len(t) == 1 for t in out)
        return [t[0] for t in out]

    assert ids[0, :8].tolist() == spell("taxi") + [pad] * 4
    assert torch.equal(ids[0, :4], ids[1, :4])  # the same string, other words around it: the same slots
    assert ids[2, :8].tolist() == spell("42") + [pad, pad] + spell("a7") + [pad, pad]
    assert ids[5, :8].tolist() == spell("ok") + [pad] * 6
    for row, p in enumerate(prompts[:4] + prompts[5:]):
        caption = tok(p, add_special_tokens=False)["input_ids"]
        k = row if row < 4 else 5
        assert ids[k, 8 : 8 + len(caption)].tolist() == caption  # the caption follows, whole
        assert int(text_lengths(ids[k : k + 1], layout)) == 8 + len(caption)
    assert ids[3, :8].eq(pad).all() and ids[4].eq(pad).all()  # no string: empty slots; empty prompt: unconditional
    # the caption has text_len - glyph_slots positions: one token more is cut and flagged
    room = layout.caption_len
    words = " ".join(["circle"] * (room + 1))
    assert len(tok(words, add_special_tokens=False)["input_ids"]) > room
    assert encode_text(tok, [words], layout).truncated == [True]
    # with end marks a string shorter than its slots is followed by the quote mark's id (visible: not [PAD]);
    # a 4-character string has none, and nothing else moves
    ended = encode_text(tok, prompts, dataclasses.replace(layout, glyph_end=True)).ids
    quote = tok('"', add_special_tokens=False)["input_ids"]
    assert len(quote) == 1
    assert ended[0, :8].tolist() == spell("taxi") + [pad] * 4  # four characters: no room, none needed
    assert ended[2, :8].tolist() == spell("42") + quote + [pad] + spell("a7") + quote + [pad]
    assert ended[5, :4].tolist() == spell("ok") + quote + [pad]
    assert torch.equal(ended[:, 8:], ids[:, 8:]) and torch.equal(ended[3:5], ids[3:5])
    with pytest.raises(ConfigError, match="glyph_end"):
        dataclasses.replace(layout, glyph_slots=0, glyph_end=True)
    # a layout saved before the settings loads with none; a bad value is refused
    old = {k: v for k, v in layout.to_dict().items() if k not in ("glyph_slots", "glyph_end")}
    assert SequenceLayout.from_dict(old) == dataclasses.replace(layout, glyph_slots=0)
    for bad in (3, -4, 48, True):
        with pytest.raises(ConfigError, match="glyph_slots"):
            dataclasses.replace(layout, glyph_slots=bad)


# --------------------------------------------------------------------------- layout
def test_layout_ids_and_serialization(layout):
    tv = layout.text_vocab
    assert (layout.bos_id, layout.boi_id, layout.eoi_id, layout.pad_id) == (tv, tv + 1, tv + 2, tv + 3)
    assert layout.image_offset == tv + 4 and layout.vocab_size == tv + 4 + 32
    assert layout.seq_len == 1 + 10 + 1 + 12 + 1
    d = json.loads(json.dumps(layout.to_dict()))
    assert SequenceLayout.from_dict(d) == layout
    with pytest.raises(ConfigError, match="'bogus'"):
        SequenceLayout.from_dict({**d, "bogus": 1})
    with pytest.raises(ConfigError, match="grid"):
        SequenceLayout(text_len=4, text_vocab=10, codebook_size=4, grid=(0, 2))


def test_sequences_targets_and_codes_round_trip(tok, layout):
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (3, *layout.grid), generator=g).to(torch.int16)  # as datasets store
    text = _text(tok, layout, ["a red circle", "", "two blue stars above a green square"])
    ids = build_sequences(text, codes, layout)
    assert ids.shape == (3, layout.seq_len) and ids.dtype == torch.long
    p = layout.prefix_len
    assert (ids[:, 0] == layout.bos_id).all() and (ids[:, p - 1] == layout.boi_id).all()
    assert (ids[:, -1] == layout.eoi_id).all()
    assert torch.equal(ids[:, 1 : p - 1], text)
    r, c = 2, 1  # raster order: row-major over (h, w)
    assert torch.equal(ids[:, p + r * layout.grid_w + c], codes[:, r, c].long() + layout.image_offset)
    assert torch.equal(build_prefix(text, layout), ids[:, :p])

    labels = loss_targets(ids, layout)
    assert (labels[:, :p] == IGNORE_INDEX).all()  # [BOS], text, [BOI]: never predicted
    assert torch.equal(labels[:, p:], ids[:, p:])  # image tokens and [EOI]
    assert (labels[:, -1] == layout.eoi_id).all()

    assert torch.equal(codes_from_tokens(image_tokens(ids, layout), layout), codes.long())
    with pytest.raises(ConfigError, match="image vocabulary"):
        codes_from_tokens(ids[:, :12] * 0, layout)
    with pytest.raises(ConfigError, match="codes must lie"):
        build_sequences(text, torch.full((3, *layout.grid), layout.codebook_size), layout)
    with pytest.raises(ConfigError, match="shape"):
        build_sequences(text, codes.transpose(1, 2), layout)


@pytest.mark.parametrize("rows", [False, True])
def test_image_loss_equals_the_hf_loss_on_the_scored_tokens(tok, layout, row_layout, rows):
    lay = row_layout if rows else layout
    model = build_model(GeneratorConfig.from_size("tiny", lay), seed=0)
    codes = torch.randint(0, lay.codebook_size, (3, *lay.grid), generator=torch.Generator().manual_seed(1))
    ids = build_sequences(_text(tok, lay, ["a red circle", "", "two blue squares"]), codes, lay)
    ref = model(input_ids=ids, labels=loss_targets(ids, lay)).loss
    fast = image_loss(model, ids, lay)
    torch.testing.assert_close(fast, ref)
    assert torch.equal(ids[:, scored_positions(lay)], ids[loss_targets(ids, lay) != IGNORE_INDEX].view(3, -1))
    with pytest.raises(ConfigError, match="shape"):
        image_loss(model, ids[:, :-1], lay)


def test_row_tokens_frame_each_row_and_are_never_scored(tok, layout, row_layout):
    h, w = row_layout.grid
    assert row_layout.vocab_size == layout.vocab_size + h and row_layout.seq_len == layout.seq_len + h
    assert [row_layout.row_id(r) for r in range(h)] == list(range(layout.vocab_size, layout.vocab_size + h))
    codes = torch.randint(0, layout.codebook_size, (2, h, w), generator=torch.Generator().manual_seed(0))
    text = _text(tok, layout, ["a red circle", ""])
    ids = build_sequences(text, codes, row_layout)
    plain = build_sequences(text, codes, layout)
    p = row_layout.prefix_len
    assert torch.equal(ids[:, :p], plain[:, :p]) and (ids[:, -1] == layout.eoi_id).all()
    for r in range(h):  # [ROW r] then the w codes of row r
        start = p + r * (w + 1)
        assert (ids[:, start] == row_layout.row_id(r)).all()
        assert torch.equal(ids[:, start + 1 : start + 1 + w], codes[:, r].long() + layout.image_offset)
    assert torch.equal(codes_from_tokens(image_tokens(ids, row_layout), row_layout), codes)
    labels = loss_targets(ids, row_layout)
    scored = labels != IGNORE_INDEX
    assert int(scored.sum(dim=1).max()) == h * w + 1  # the codes and [EOI], not the row tokens
    assert torch.equal(labels[scored], ids[scored])
    # a layout saved before row tokens existed still loads (as a plain raster)
    d = layout.to_dict()
    del d["row_tokens"]
    assert SequenceLayout.from_dict(d) == layout
    with pytest.raises(ConfigError, match="row_tokens"):
        dataclasses.replace(layout, row_tokens="yes")


def test_condition_dropout(tok, layout):
    text = _text(tok, layout, ["a red circle"] * 64)
    assert torch.equal(condition_dropout(text, 0.0, layout), text)
    assert torch.equal(condition_dropout(text, 0.999999, layout), unconditional_text(64, layout))
    a = condition_dropout(text, 0.5, layout, torch.Generator().manual_seed(1))
    b = condition_dropout(text, 0.5, layout, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    dropped = (a == layout.pad_id).all(dim=1)
    assert 10 < int(dropped.sum()) < 54  # about half of the rows, each row all-or-nothing
    assert torch.equal(a[~dropped], text[~dropped])


# --------------------------------------------------------------------------- config and model
def test_generator_config_round_trip_and_unknown_keys(layout):
    cfg = GeneratorConfig.from_size("tiny", layout, cond_dropout=0.2)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert GeneratorConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="'hiden_size'"):
        GeneratorConfig.from_dict({**d, "hiden_size": 64})
    with pytest.raises(ValueError, match="'codebook'"):
        GeneratorConfig.from_dict({**d, "layout": {**d["layout"], "codebook": 3}})
    with pytest.raises(ConfigError, match="num_kv_heads"):
        cfg.replace(num_kv_heads=3)
    with pytest.raises(ConfigError, match="unknown generator size"):
        GeneratorConfig.from_size("XXL", layout)
    with pytest.raises(ConfigError, match="'nope'"):
        cfg.replace(nope=1)
    assert cfg.replace(hidden_size=64).hidden_size == 64 and cfg.hidden_size == 128  # a copy


@pytest.mark.parametrize("size", list(SIZES))
def test_param_count_matches_the_built_model(size, layout):
    from transformers import LlamaForCausalLM

    cfg = GeneratorConfig.from_size(size, layout)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = LlamaForCausalLM(llama_config(cfg))
    assert param_count(size, layout) == sum(p.numel() for p in model.parameters())


def test_build_model_config(layout):
    model = build_model(GeneratorConfig(layout), seed=0)
    c = model.config
    assert c.vocab_size == layout.vocab_size and c.max_position_embeddings >= layout.seq_len
    assert c.rope_parameters["rope_theta"] == 10000.0 and not c.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert 0.5e6 < param_count("tiny", layout) < 3e6
    same = build_model(GeneratorConfig(layout), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))


def test_causality(tok, layout, model64):
    codes = torch.randint(0, layout.codebook_size, (2, *layout.grid), generator=torch.Generator().manual_seed(0))
    ids = build_sequences(_text(tok, layout, ["a red circle", "a blue star"]), codes, layout)
    with torch.no_grad():
        base = model64(ids).logits
        for t in (3, layout.prefix_len, layout.seq_len - 2):
            changed = ids.clone()
            changed[:, t] = layout.image_offset + (changed[:, t] + 1 - layout.image_offset) % layout.codebook_size
            out = model64(changed).logits
            assert torch.equal(out[:, :t], base[:, :t])  # earlier positions never see a later token
            assert not torch.allclose(out[:, t], base[:, t])


# --------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("cfg_scale", [3.0, 1.0])
def test_kv_cache_decoding_equals_full_recomputation(tok, layout, model64, cfg_scale):
    text = _text(tok, layout, ["a red circle above a blue square", "two green stars", ""])
    greedy = SampleConfig.greedy(cfg_scale=cfg_scale)
    assert torch.equal(generate(model64, layout, text, greedy), generate(model64, layout, text, greedy.replace(use_cache=False)))
    sampled = SampleConfig(cfg_scale=cfg_scale, temperature=1.3, top_k=20, top_p=0.95, seed=5)
    assert torch.equal(generate(model64, layout, text, sampled), generate(model64, layout, text, sampled.replace(use_cache=False)))


def test_row_token_sampling_agrees_with_training_sequences(tok, row_layout):
    """The sampler feeds [ROW r] where build_sequences puts it: greedy codes, fed back as a training
    sequence, are the argmax at every code position; and the cache equals full recomputation."""
    model = build_model(GeneratorConfig(row_layout), seed=0).double().eval()
    text = _text(tok, row_layout, ["a red circle above a blue square", ""])
    greedy = SampleConfig.greedy(cfg_scale=2.0)
    codes = generate(model, row_layout, text, greedy)
    assert torch.equal(codes, generate(model, row_layout, text, greedy.replace(use_cache=False)))
    sampled = SampleConfig(cfg_scale=2.0, temperature=1.3, top_k=20, seed=5)
    assert torch.equal(generate(model, row_layout, text, sampled),
                       generate(model, row_layout, text, sampled.replace(use_cache=False)))

    ids = build_sequences(text, codes, row_layout)
    both = torch.cat([text, unconditional_text(2, row_layout)])
    with torch.no_grad():
        logits = model(build_sequences(both, torch.cat([codes, codes]), row_layout)).logits
    pos = row_layout.code_positions()
    img = logits[:, pos - 1, row_layout.image_offset : row_layout.image_offset + row_layout.codebook_size]
    cond, uncond = img.chunk(2)
    assert torch.equal((uncond + (cond - uncond) * 2.0).argmax(-1), ids[:, pos] - row_layout.image_offset)


@pytest.mark.parametrize("glyph_slots", [0, 4])
def test_masked_padding_is_exact_when_trimmed_and_sampled(tok, row_layout, glyph_slots):
    """With mask_padding the padding adds nothing: training's trimmed batch gives the same logits and
    loss as the full masked sequence, and the sampler (cache or not) picks the training argmax. With glyph
    slots the empty ones are [PAD]s inside the text, masked the same way."""
    from ar_model.layout import padding_mask, trim_padding

    layout = dataclasses.replace(row_layout, mask_padding=True, text_len=row_layout.text_len + glyph_slots,
                                 glyph_slots=glyph_slots)
    model = build_model(GeneratorConfig(layout), seed=0).double().eval()
    prompts = ["a red circle", "two green stars", ""] if not glyph_slots else ['a red "ok"', "two green stars", ""]
    text = _text(tok, layout, prompts)  # short, shorter, unconditional
    codes = torch.randint(0, layout.codebook_size, (3, *layout.grid))
    ids = build_sequences(text, codes, layout)
    kept, mask, positions = trim_padding(ids, layout)
    assert kept.shape[1] < ids.shape[1] and torch.equal(positions[0, -1], torch.tensor(ids.shape[1] - 1))
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=padding_mask(ids, layout)).logits
        trimmed = model(input_ids=kept, attention_mask=mask, position_ids=positions).logits
        n = layout.image_len + 2
        assert torch.allclose(full[:, -n:], trimmed[:, -n:], atol=1e-10)
        plain = model(input_ids=ids).logits  # attending to the padding: another function
        assert not torch.allclose(full[:, -n:], plain[:, -n:], atol=1e-3)
        want = torch.nn.functional.cross_entropy(
            full[:, scored_positions(layout) - 1].flatten(0, 1), ids[:, scored_positions(layout)].flatten())
        assert torch.allclose(image_loss(model, ids, layout).double(), want.double(), atol=1e-6)
    greedy = SampleConfig.greedy(cfg_scale=2.0)
    sampled = generate(model, layout, text, greedy)
    assert torch.equal(sampled, generate(model, layout, text, greedy.replace(use_cache=False)))
    ids = build_sequences(text, sampled, layout)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=padding_mask(ids, layout)).logits
        both = torch.cat([text, unconditional_text(3, layout)])
        seqs = build_sequences(both, torch.cat([sampled, sampled]), layout)
        logits = model(input_ids=seqs, attention_mask=padding_mask(seqs, layout)).logits
    pos = layout.code_positions()
    img = logits[:, pos - 1, layout.image_offset : layout.image_offset + layout.codebook_size]
    cond, uncond = img.chunk(2)
    assert torch.equal((uncond + (cond - uncond) * 2.0).argmax(-1), ids[:, pos] - layout.image_offset)
    if glyph_slots:  # the empty slots of "two green stars" are [PAD]s inside the kept columns
        assert (kept[1, 1 : 1 + glyph_slots] == layout.pad_id).all() and (mask[1, 1 : 1 + glyph_slots] == 0).all()
    # a layout saved before the setting existed loads with it off
    old = {k: v for k, v in row_layout.to_dict().items() if k != "mask_padding"}
    assert SequenceLayout.from_dict(old) == row_layout and not row_layout.mask_padding


def _count_rows(model):
    rows = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    return rows, handle


def test_cfg_scale_one_is_plain_conditional_sampling(tok, layout, model64):
    text = _text(tok, layout, ["a red circle", "a purple star below a square"])
    b = text.shape[0]
    sc = SampleConfig(cfg_scale=1.0, temperature=1.0, seed=11)

    rows, handle = _count_rows(model64)
    try:
        codes = generate(model64, layout, text, sc)
    finally:
        handle.remove()
    assert set(rows) == {b}  # the unconditional half never runs

    # reference: plain conditional sampling written out by hand, full recomputation each step
    gen = torch.Generator().manual_seed(11)
    seq = build_prefix(text, layout)
    ref = []
    with torch.no_grad():
        for _ in range(layout.num_image_tokens):
            logits = model64(seq).logits[:, -1, layout.image_offset : layout.image_offset + layout.codebook_size]
            code = torch.multinomial(logits.float().softmax(-1), 1, generator=gen)  # (B, 1)
            ref.append(code)
            seq = torch.cat([seq, code + layout.image_offset], dim=1)
    ref = torch.cat(ref, dim=1).reshape(b, *layout.grid)
    assert torch.equal(codes, ref)

    rows, handle = _count_rows(model64)
    try:
        generate(model64, layout, text, sc.replace(cfg_scale=3.0))
    finally:
        handle.remove()
    assert set(rows) == {2 * b}  # guided: conditional and unconditional rows in one batch


def test_guidance_mixes_the_right_halves(tok, layout, model64):
    """scale 0 leaves only the unconditional logits: it must equal conditioning on the all-[PAD] text."""
    text = _text(tok, layout, ["a red circle", "two blue stars"])
    uncond_only = generate(model64, layout, text, SampleConfig.greedy(cfg_scale=0.0))
    on_pad = generate(model64, layout, unconditional_text(2, layout), SampleConfig.greedy(cfg_scale=1.0))
    assert torch.equal(uncond_only, on_pad)
    cond = generate(model64, layout, text, SampleConfig.greedy(cfg_scale=1.0))
    assert not torch.equal(cond, on_pad)


def test_sampling_range_seed_and_mode(tok, layout, model64):
    text = _text(tok, layout, ["a red circle", "", "a green star left of a blue circle"])
    sc = SampleConfig(cfg_scale=4.0, temperature=2.0, seed=3)
    torch.manual_seed(0)
    a = generate(model64, layout, text, sc)
    torch.manual_seed(123)  # the global RNG does not matter
    b = generate(model64, layout, text, sc)
    c = generate(model64, layout, text, sc.replace(seed=4))
    assert a.shape == (3, *layout.grid) and a.dtype == torch.long
    assert int(a.min()) >= 0 and int(a.max()) < layout.codebook_size
    assert torch.equal(a, b) and not torch.equal(a, c)
    a[0, 0, 0] = 0  # an ordinary tensor, not an inference tensor
    assert generate(model64, layout, text, sc.replace(seed=None)).shape == (3, *layout.grid)

    model64.train()
    generate(model64, layout, text, SampleConfig.greedy())
    assert model64.training  # the former mode is restored
    model64.eval()


def test_filters_and_greedy():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False, False]]
    p = logits.softmax(-1)[0]  # ~[.64, .24, .09, .03, .01]
    kept = torch.isfinite(filter_logits(logits, top_p=float(p[0] + p[1]) - 1e-3)).tolist()
    assert kept == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).tolist() == [[True, False, False, False, False]]
    # min-p keeps what is at least min_p times the best: p / p[0] ~ [1, .37, .14, .05, .02]
    assert torch.isfinite(filter_logits(logits, min_p=0.1)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, min_p=0.5)).tolist() == [[True, False, False, False, False]]
    # a spread choice top-p would cut survives min-p: 1 in 16 against 15 in 16
    spread = torch.tensor([[0.0, math.log(15.0)]])
    assert torch.isfinite(filter_logits(spread, top_p=0.9)).tolist() == [[False, True]]
    assert torch.isfinite(filter_logits(spread, min_p=0.05)).tolist() == [[True, True]]
    gen = torch.Generator().manual_seed(0)
    draws = [sample_from_logits(logits, SampleConfig(temperature=1.0, min_p=0.1), gen).item() for _ in range(200)]
    assert set(draws) == {0, 1, 2}
    assert sample_from_logits(logits, SampleConfig(temperature=0.0), gen).tolist() == [0]
    assert sample_from_logits(logits, SampleConfig(top_k=1), gen).tolist() == [0]
    with pytest.raises(ConfigError, match="top_p"):
        SampleConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="min_p"):
        SampleConfig(min_p=1.0)
    with pytest.raises(ConfigError, match="'topk'"):
        SampleConfig.from_dict({"topk": 3})


# --------------------------------------------------------------------------- training signal
@pytest.mark.parametrize("rows", [False, True])
def test_tiny_model_overfits_one_batch(tok, layout, rows):
    layout = dataclasses.replace(layout, row_tokens=rows)
    model = build_model(GeneratorConfig(layout), seed=0).train()
    codes = torch.randint(0, layout.codebook_size, (4, *layout.grid), generator=torch.Generator().manual_seed(1))
    ids = build_sequences(_text(tok, layout, ["a red circle", "a blue star", "two green squares", ""]), codes, layout)
    labels = loss_targets(ids, layout)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    torch.manual_seed(0)
    losses = []
    for _ in range(80):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0  # ~ln(vocab) at init
    assert losses[-1] < losses[0] / 20, losses[::10]
    # and the memorised images come back out of the sampler
    got = generate(model, layout, ids[:, 1 : layout.prefix_len - 1], SampleConfig.greedy(cfg_scale=1.0))
    assert (got == codes).float().mean() > 0.9


# --------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tok, layout, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = GeneratorConfig(layout, cond_dropout=0.15)
    model = build_model(cfg, seed=0).eval()
    codes = torch.randint(0, layout.codebook_size, (2, *layout.grid), generator=torch.Generator().manual_seed(0))
    ids = build_sequences(_text(tok, layout, ["a red circle", "ß✓"]), codes, layout)
    with torch.no_grad():
        ref = model(ids).logits

    out = tmp_path / "run" / "generator"
    save_generator(model, cfg, tok, out)
    save_generator(model, cfg, tok, out)  # saving over an existing directory replaces it
    assert sorted(p.name for p in out.parent.iterdir()) == ["generator"]  # no temp dirs left behind
    meta = json.loads((out / "tessera_layout.json").read_text())
    assert meta["format"] == "tessera.generator" and meta["version"] == 1
    assert meta["generator"]["layout"] == layout.to_dict()
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))

    g = load_generator(out, device="cpu")
    assert g.cfg == cfg and g.layout == layout and not g.model.training
    assert len(g.tokenizer) == len(tok)
    assert g.tokenizer("a red circle ß✓")["input_ids"] == tok("a red circle ß✓")["input_ids"]
    with torch.no_grad():
        assert torch.equal(g.model(ids).logits, ref)
        plain = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
        assert torch.equal(plain(ids).logits, ref)


def test_load_errors_name_the_problem(tok, layout, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_generator(tmp_path / "missing")

    foreign = tmp_path / "foreign"  # an HF model dir, but not one of ours
    build_model(GeneratorConfig(layout), seed=0).save_pretrained(str(foreign))
    with pytest.raises(CheckpointError, match="tessera_layout.json"):
        load_generator(foreign)

    ours = tmp_path / "ours"
    save_generator(build_model(GeneratorConfig(layout), seed=0), GeneratorConfig(layout), tok, ours)
    meta_file = ours / "tessera_layout.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format": "something.else"}))
    with pytest.raises(CheckpointError, match="format"):
        load_generator(ours)
    meta_file.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match="version"):
        load_generator(ours)
    meta_file.write_text(json.dumps({**meta, "generator": {**meta["generator"], "extra": 1}}))
    with pytest.raises(CheckpointError, match="'extra'"):
        load_generator(ours)


# --------------------------------------------------------------------------- package boundary
def test_ar_model_imports_only_allowed_packages():
    allowed = {"torch", "einops", "transformers", "tokenizers", "safetensors", "numpy", "ar_model", "__future__"}
    root = Path(ar_model.__file__).parent
    import sys

    for file in root.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in sys.stdlib_module_names, f"{file.name} imports {name}"
