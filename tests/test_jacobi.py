"""Speculative Jacobi decoding: greedy gives plain greedy's codes; sampling follows plain sampling's distribution."""

import dataclasses
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch

from ar_model import GeneratorConfig, SampleConfig, SequenceLayout, build_model, encode_text, generate, train_text_tokenizer
from ar_model.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return train_text_tokenizer(["a red circle above a blue square", "two green stars", "a small yellow triangle"],
                                vocab_size=300)


def _setup(tok, **layout_changes):
    layout = dataclasses.replace(SequenceLayout.for_tokenizer(tok, codebook_size=32, grid=(3, 4), text_len=10),
                                 **layout_changes)
    model = build_model(GeneratorConfig(layout), seed=0).double().eval()
    text = encode_text(tok, ["a red circle above a blue square", "two green stars", ""], layout).ids
    return layout, model, text


@pytest.mark.parametrize("changes", [{}, {"row_tokens": True}, {"row_tokens": True, "mask_padding": True}])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
@pytest.mark.parametrize("window, init", [(16, "random"), (3, "random"), (5, "above"), (1, "random")])
def test_greedy_jacobi_gives_the_plain_greedy_codes(tok, changes, cfg_scale, window, init):
    layout, model, text = _setup(tok, **changes)
    greedy = SampleConfig.greedy(cfg_scale=cfg_scale, seed=3)
    stats = {}
    jacobi = generate(model, layout, text, greedy.replace(decoder="jacobi", jacobi_window=window, jacobi_init=init),
                      stats=stats)
    assert torch.equal(jacobi, generate(model, layout, text, greedy))
    assert 2 <= stats["forward_passes"] <= layout.num_image_tokens + 1


def test_a_window_of_one_is_plain_decoding_pass_for_pass(tok):
    layout, model, text = _setup(tok)
    stats = {}
    generate(model, layout, text, SampleConfig.greedy(decoder="jacobi", jacobi_window=1), stats=stats)
    plain = {}
    generate(model, layout, text, SampleConfig.greedy(), stats=plain)
    # a window of one accepts its draft or replaces it, and adds one more code when it is accepted
    assert stats["forward_passes"] <= plain["forward_passes"] + 1


def test_jacobi_sampling_follows_the_plain_distribution(tok):
    """The joint distribution of the first three codes (a 2x2 image of 4 codes: 64 outcomes) under plain and Jacobi
    sampling with guidance at temperature 1, 6,000 samples each: the total variation between them is within the
    noise of two plain samples, while plain sampling at temperature 1.3 (a real change) lies outside it."""
    layout = SequenceLayout.for_tokenizer(tok, codebook_size=4, grid=(2, 2), text_len=6)
    # float32: a distribution check needs no float64 (the exact greedy checks above use it); 4x faster on 1 thread
    model = build_model(GeneratorConfig(layout), seed=1).eval()
    with torch.no_grad():  # sharpen the tiny model's distributions so that random drafts are often rejected
        model.lm_head.weight.mul_(3)
    text = encode_text(tok, ["two green stars"] * 6000, layout).ids
    sc = SampleConfig(cfg_scale=1.5, temperature=1.0, seed=11)

    def histogram(codes: torch.Tensor) -> torch.Tensor:
        flat = codes.flatten(1)[:, :3]
        return torch.bincount(flat[:, 0] * 16 + flat[:, 1] * 4 + flat[:, 2], minlength=64).double() / len(flat)

    def tv(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(0.5 * (a - b).abs().sum())

    plain = histogram(generate(model, layout, text, sc))
    floor = tv(plain, histogram(generate(model, layout, text, sc.replace(seed=12))))  # plain vs plain
    jacobi = histogram(generate(model, layout, text, sc.replace(seed=13, decoder="jacobi", jacobi_window=4)))
    hotter = histogram(generate(model, layout, text, sc.replace(seed=14, temperature=1.3)))
    bound = max(0.04, 1.5 * floor)
    assert plain.max() < 0.5  # not a degenerate distribution
    assert tv(plain, jacobi) < bound, (tv(plain, jacobi), floor)
    assert tv(plain, hotter) > bound, (tv(plain, hotter), floor)  # the test can tell a different distribution


def test_jacobi_settings_are_checked():
    with pytest.raises(ConfigError, match="decoder"):
        SampleConfig(decoder="zip")
    with pytest.raises(ConfigError, match="jacobi_window"):
        SampleConfig(decoder="jacobi", jacobi_window=0)
    with pytest.raises(ConfigError, match="jacobi_init"):
        SampleConfig(jacobi_init="zeros")
    with pytest.raises(ConfigError, match="KV cache"):
        SampleConfig(decoder="jacobi", use_cache=False)


# --------------------------------------------------------------------------- parallel row decoding (ZipAR)
@pytest.mark.parametrize("changes", [{"row_tokens": True}, {"row_tokens": True, "mask_padding": True}])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_zipar_with_a_window_of_a_whole_row_is_plain_decoding(tok, changes, cfg_scale):
    layout, model, text = _setup(tok, **changes)
    greedy = SampleConfig.greedy(cfg_scale=cfg_scale)
    plain = generate(model, layout, text, greedy)
    assert torch.equal(generate(model, layout, text, greedy.replace(decoder="zipar", zipar_window=layout.grid_w)), plain)
    sampled = SampleConfig(cfg_scale=cfg_scale, temperature=1.0, seed=4)
    assert torch.equal(generate(model, layout, text, sampled.replace(decoder="zipar", zipar_window=9)),
                       generate(model, layout, text, sampled))  # the same draws in the same order


def test_zipar_starts_rows_early_and_needs_row_tokens(tok):
    layout, model, text = _setup(tok, row_tokens=True)  # 3 rows of 4
    stats, plain = {}, {}
    codes = generate(model, layout, text, SampleConfig.greedy(decoder="zipar", zipar_window=1), stats=stats)
    generate(model, layout, text, SampleConfig.greedy(), stats=plain)
    assert codes.shape == (3, 3, 4) and int(codes.min()) >= 0 and int(codes.max()) < layout.codebook_size
    assert stats["forward_passes"] < plain["forward_passes"]  # 12 codes in fewer sequential passes
    assert torch.equal(codes[:, 0], generate(model, layout, text, SampleConfig.greedy())[:, 0])  # row 0 is exact
    flat, model_flat, text_flat = _setup(tok)
    with pytest.raises(ConfigError, match="row tokens"):
        generate(model_flat, flat, text_flat, SampleConfig.greedy(decoder="zipar"))


# --------------------------------------------------------------------------- static cache (+ compile)
@pytest.mark.parametrize("changes", [{}, {"row_tokens": True}, {"row_tokens": True, "mask_padding": True}])
def test_the_static_cache_draws_what_the_dynamic_cache_draws(tok, changes):
    layout, model, text = _setup(tok, **changes)
    for sc in (SampleConfig.greedy(cfg_scale=3.0), SampleConfig(cfg_scale=2.0, temperature=1.0, seed=5)):
        assert torch.equal(generate(model, layout, text, sc.replace(cache="static")), generate(model, layout, text, sc))


@pytest.mark.parametrize("changes", [{}, {"row_tokens": True}, {"row_tokens": True, "mask_padding": True}])
@pytest.mark.parametrize("window, init", [(16, "random"), (3, "above")])
def test_jacobi_on_the_static_cache_draws_what_it_draws_on_the_dynamic_one(tok, changes, window, init):
    layout, model, text = _setup(tok, **changes)
    greedy = SampleConfig.greedy(cfg_scale=3.0, seed=3)
    for sc in (greedy, SampleConfig(cfg_scale=2.0, temperature=1.0, seed=5)):
        jacobi = sc.replace(decoder="jacobi", jacobi_window=window, jacobi_init=init)
        static, dynamic = {}, {}
        codes = generate(model, layout, text, jacobi.replace(cache="static"), stats=static)
        assert torch.equal(codes, generate(model, layout, text, jacobi, stats=dynamic))
        assert static == dynamic  # the same passes: only where the cache lives differs
    static_greedy = greedy.replace(decoder="jacobi", jacobi_window=window, jacobi_init=init, cache="static")
    assert torch.equal(generate(model, layout, text, static_greedy), generate(model, layout, text, greedy))


def test_static_cache_settings_are_checked():
    with pytest.raises(ConfigError, match="static cache"):
        SampleConfig(compile=True)
    with pytest.raises(ConfigError, match="plain and jacobi decoders"):
        SampleConfig(cache="static", decoder="zipar")
    SampleConfig(cache="static", decoder="jacobi", compile=True)  # speculative Jacobi on the static cache: fine
    with pytest.raises(ConfigError, match="cache must be"):
        SampleConfig(cache="paged")


@pytest.mark.slow
def test_compiled_static_decoding_draws_the_same_codes(tok):
    layout, model, text = _setup(tok, row_tokens=True)
    model = model.float()
    greedy = SampleConfig.greedy(cfg_scale=2.0)
    assert torch.equal(generate(model, layout, text, greedy.replace(cache="static", compile=True)),
                       generate(model, layout, text, greedy))


@pytest.mark.slow
def test_compiled_static_jacobi_draws_the_plain_greedy_codes(tok):
    layout, model, text = _setup(tok, row_tokens=True, mask_padding=True)
    model = model.float()
    greedy = SampleConfig.greedy(cfg_scale=2.0)
    jacobi = greedy.replace(decoder="jacobi", jacobi_window=6, cache="static", compile=True)
    assert torch.equal(generate(model, layout, text, jacobi), generate(model, layout, text, greedy))


def test_bench_points_may_set_the_decoder():
    from eval.bench import BenchConfig, BenchError, _point_label, _point_name

    cfg = BenchConfig(ar_points=[{"decoder": "jacobi", "jacobi_window": 8}, {"decoder": "zipar"}],
                      ar_main={"cache": "static"})
    sc = SampleConfig(decoder="jacobi", jacobi_window=8)
    assert _point_name("generator", cfg.ar_points[0], sc).endswith("_jacobi-8-random")
    assert _point_label("generator", cfg.ar_points[0], sc).endswith("jacobi 8 random")
    assert _point_name("generator", {}, SampleConfig()) == "ar_cfg1.5"  # plain points keep their old names
    with pytest.raises(BenchError, match="unknown AR sweep field"):
        BenchConfig(ar_points=[{"decoder_window": 3}])
