"""Decoder-checked encoding (vqtok.search): it never does worse than the encoder, its locality arithmetic is exact
(it ends where no single candidate at any position lowers the error), and it refuses what it cannot do."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tessera.cli import main
from train.data import shapes
from train.tokenizer_stage import preset_config, train_tokenizer
from vqtok import TokenizerError, VQConfig, VQTokenizer
from vqtok import search
from vqtok.search import block_errors, decoder_radius, search_codes

# the cpu-photo net's shape (pixels folded 4x4 into channels, one level, per-position norm), tiny: 32 px, 8x8 codes
LOCAL = dict(resolution=32, base_channels=8, channel_mult=(2,), space_to_depth=4, latent_dim=16, norm="pixel",
             quantizer="vq", codebook_size=64, codebook_dim=8)


def tokenizer(**extra) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(VQConfig(**{**LOCAL, **extra})).eval()


def smooth_images(n: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: random 4x4 colour fields upsampled (something a tokenizer can draw)."""
    g = torch.Generator().manual_seed(1)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def total_error(tok: VQTokenizer, codes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return block_errors(tok.decode(codes), images, tok.cfg.downsample).flatten(1).sum(1)  # (B,)


@torch.no_grad()
def test_nearest_codes_lead_with_the_encoders_code():
    tok, x = tokenizer(), smooth_images(3)
    near = tok.quantizer.nearest_codes(tok.encoder(x), 5)  # (B, h, w, 5)
    assert near.shape == (3, 8, 8, 5)
    assert torch.equal(near[..., 0], tok.encode(x).codes)
    assert (near[..., 1:] != near[..., :1]).all()  # five different codes at each position


def test_decoder_radius_is_the_decoders_reach():
    # decoder: conv_in, two convs per residual block, conv_out, all 3x3 on the code grid
    assert decoder_radius(tokenizer()) == 4
    assert decoder_radius(tokenizer(num_res_blocks=2)) == 6
    assert decoder_radius(tokenizer(decoder_res_blocks=7)) == 16  # past the first probe's 12: measured again
    with pytest.raises(TokenizerError, match="not local"):
        decoder_radius(tokenizer(norm="group", norm_groups=4))  # whole-map statistics: every block moves


@torch.no_grad()
def test_search_never_worse_and_ends_at_a_local_optimum():
    tok, x = tokenizer(), smooth_images(2)
    plain = tok.encode(x).codes
    assert torch.equal(search_codes(tok, x, candidates=4, rounds=0), plain)
    assert torch.equal(search_codes(tok, x, candidates=1, rounds=3), plain)
    codes = search_codes(tok, x, candidates=4, rounds=50)  # stops early once a round changes nothing
    before, after = total_error(tok, plain, x), total_error(tok, codes, x)
    assert (after < before).all(), (before, after)
    # brute force: no single position's change to any of its four candidates lowers an image's error further
    near = tok.quantizer.nearest_codes(tok.encoder(x), 4)  # (B, h, w, 4)
    for i in range(len(x)):
        variants = []
        for y in range(8):
            for xx in range(8):
                for j in range(4):
                    v = codes[i].clone()
                    v[y, xx] = near[i, y, xx, j]
                    variants.append(v)
        errors = total_error(tok, torch.stack(variants), x[i : i + 1].expand(len(variants), -1, -1, -1))
        assert errors.min() >= after[i] - 1e-4, (float(errors.min()), float(after[i]))


def test_search_reports_progress_and_bounds_its_memory(monkeypatch):
    tok, x = tokenizer(), smooth_images(2)
    calls = []
    codes = search_codes(tok, x, candidates=4, rounds=50, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (1, 50 * 8 * 8) and calls[-1] == (50 * 8 * 8, 50 * 8 * 8)  # 8x8 lattices on an 8x8 grid
    assert len(calls) < 50 * 8 * 8  # it stopped early, at a local optimum, and said so
    monkeypatch.setattr(search, "TRIAL_POSITIONS", 1)  # one candidate decoded at a time: the same search
    chunked = search_codes(tok, x, candidates=4, rounds=50)
    # (decodes of another batch size may differ in the last bits, so near-ties could break the other way)
    assert (chunked == codes).float().mean() > 0.9
    torch.testing.assert_close(total_error(tok, chunked, x), total_error(tok, codes, x), rtol=1e-3, atol=1e-4)


def test_search_refuses_what_it_cannot_do():
    x = smooth_images(1)
    with pytest.raises(TokenizerError, match="vq quantizer"):
        search_codes(tokenizer(quantizer="fsq", fsq_levels=(4, 4, 4)), x)
    with pytest.raises(TokenizerError, match="not local"):
        search_codes(tokenizer(norm="group", norm_groups=4), x)
    with pytest.raises(ValueError, match="candidates"):
        search_codes(tokenizer(), x, candidates=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny tokenizer runs on the shapes world: the per-position norm (local) and GroupNorm (not local)."""
    made = {}
    for name, norm in (("pixel", {"vq.norm": "pixel"}), ("group", {"vq.norm": "group", "vq.norm_groups": 4})):
        cfg = preset_config("cpu").override({
            **{f"vq.{k}": list(v) if isinstance(v, tuple) else v for k, v in LOCAL.items()}, **norm,
            "loop.steps": 20, "loop.batch_size": 8, "loop.warmup_steps": 2, "loop.ckpt_every": 20,
            "loop.progress": False, "loop.device": "cpu", "data.train_images": 64})
        made[name] = tmp_path_factory.mktemp(name)
        train_tokenizer(cfg, made[name])
    return made


def test_reconstruct_cli_searches_codes(runs, tmp_path, capsys):
    path = tmp_path / "scene.png"
    Image.fromarray(shapes.render(shapes.sample_scenes(1, seed=3)[0], 32)).save(path)
    out = tmp_path / "grid.png"
    assert main(["reconstruct", "--run", str(runs["pixel"]), str(path), "--out", str(out), "--search", "4"]) == 0
    text = capsys.readouterr().out
    plain, searched = (float(v) for v in text.split("PSNR ")[1].replace(" dB", "").split("; decoder-checked codes "))
    assert searched >= plain
    tile = (32 + 2 * 2) * 4  # save_grid: 2 px of padding a side, enlarged 4x
    assert Image.open(out).size == (tile, 3 * tile)  # originals, reconstructions, from decoder-checked codes
    # a GroupNorm tokenizer is refused with the reason, not a traceback
    assert main(["reconstruct", "--run", str(runs["group"]), str(path), "--out", str(out), "--search", "4"]) == 2
    assert "not local" in capsys.readouterr().err


def test_reconstruct_cli_whole_images_at_their_own_size(runs, tmp_path, capsys):
    scene = shapes.render(shapes.sample_scenes(1, seed=4)[0], 64)
    Image.fromarray(scene[:38, :53]).save(tmp_path / "wide.png")  # -> 36 x 52 (whole codes of 4 px)
    Image.fromarray(scene[:30, :30]).save(tmp_path / "small.png")  # -> 28 x 28
    out = tmp_path / "whole.png"
    files = [str(tmp_path / "wide.png"), str(tmp_path / "small.png")]
    assert main(["reconstruct", "--run", str(runs["pixel"]), *files, "--out", str(out), "--whole", "--search", "4"]) == 0
    assert "decoder-checked codes" in capsys.readouterr().out
    # three rows (originals, reconstructions, checked codes) of two images padded to 36 x 52, 2 px a side, 1x
    assert Image.open(out).size == (2 * (52 + 4), 3 * (36 + 4))
    Image.fromarray(scene[:3, :3]).save(tmp_path / "tiny.png")  # under one code's 4 x 4 pixels
    assert main(["reconstruct", "--run", str(runs["pixel"]), str(tmp_path / "tiny.png"), "--out", str(out),
                 "--whole"]) == 2
    assert "smaller than" in capsys.readouterr().err
