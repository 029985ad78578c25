"""benchmarks/photo_tokenizer.py at toy sizes: crops of the bundled photographs, training, whole and tiled codes, JPEG and
bicubic at the same bits per pixel."""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

import train.loop

pytest.importorskip("skimage")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import photo_tokenizer  # noqa: E402


def test_the_codecs_and_the_metrics_behave():
    image = photo_tokenizer.photo("astronaut")[:128, :128]
    same = photo_tokenizer.metrics(image, image)
    assert same["psnr"] > 90 and same["ssim"] == pytest.approx(1.0) and same["delta_e"] == pytest.approx(0.0, abs=1e-6)
    jpeg, bits, quality = photo_tokenizer.jpeg_at(image, 0.625)
    assert bits <= 0.625 and jpeg.shape == image.shape and 1 <= quality <= 95
    better = photo_tokenizer.jpeg_at(image, 2.0)
    assert better[2] > quality and photo_tokenizer.metrics(image, better[0])["psnr"] > photo_tokenizer.metrics(image, jpeg)["psnr"]
    blurred = photo_tokenizer.bicubic_at(image, 4)
    assert blurred.shape == image.shape and 15 < photo_tokenizer.metrics(image, blurred)["psnr"] < 40


def test_the_seam_step_sees_tiles_and_not_a_smooth_copy():
    image = photo_tokenizer.photo("astronaut")[:128, :192]
    assert photo_tokenizer.seam_step(image, image, 64) == pytest.approx(0.0)
    tiled = image.astype(np.int16).copy()
    tiled[:64, 64:128] += 12  # one tile brighter: a step at its four edges
    tiled[64:, :64] -= 12
    seam = photo_tokenizer.seam_step(image, np.clip(tiled, 0, 255).astype(np.uint8), 64)
    assert seam > 2.0
    assert photo_tokenizer.seam_step(image, photo_tokenizer.bicubic_at(image, 4), 64) < 0.5  # blur: no lines


def test_blended_windows_decode_a_local_decoder_exactly():
    """decode_windows: the blend weights sum to one everywhere, the grid's uneven edges included (a decoder that
    draws each code's patch alone gives the same image as one decode of the whole grid); one window, one decode."""
    import torch

    from vqtok import VQConfig, VQTokenizer

    torch.manual_seed(0)
    local = VQTokenizer(VQConfig(architecture="patch", resolution=16, base_channels=8, norm_groups=4,
                                 channel_mult=(1, 1), latent_dim=8, codebook_size=64)).eval()
    codes = torch.randint(0, 64, (1, 20, 28))  # grids of 8x8 codes a window: 2.5 x 3.5 windows, edges uneven
    with torch.no_grad():
        whole, blended = local.decode(codes), photo_tokenizer.decode_windows(local, codes, 8)
        assert blended.shape == whole.shape == (1, 3, 40, 56)
        assert torch.allclose(blended, whole, atol=1e-5)
        small = codes[:, :8, :8]  # one window: one plain decode
        assert torch.equal(photo_tokenizer.decode_windows(local, small, 8), local.decode(small))


def test_the_benchmark_runs_end_to_end_at_toy_sizes(tmp_path, capsys):
    tiny = ["vq.base_channels=8", "vq.norm_groups=4", "vq.latent_dim=8", "vq.codebook_size=64", "loop.batch_size=8",
            "loop.device=\"cpu\""]
    argv = ["--run", str(tmp_path / "run"), "--steps", "3", "--crops", "32", "--out", str(tmp_path / "r.json"),
            "--search-candidates", "2", "--search-rounds", "1"]
    assert photo_tokenizer.main([*argv, *[a for s in tiny for a in ("--set", s)]]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert len(list((tmp_path / "run" / "crops").glob("*.png"))) == 32
    assert result["bpp"] == pytest.approx(6 / 16) and 0 < result["codebook_usage"] <= 1
    assert [r["photo"] for r in result["photos"]] == ["astronaut", "chelsea"]
    fit = result["crop_fit"]  # the fit on 32 training crops against 32 fresh ones of the same photos
    assert len(list((tmp_path / "run" / "fresh_crops").glob("*.png"))) == 32
    assert np.isfinite(fit["training_crops"]) and np.isfinite(fit["fresh_crops"])
    for r in result["photos"]:
        assert {"whole", "tiles", "bicubic"} <= set(r) and np.isfinite(r["whole"]["psnr"])
        assert r["searched"]["psnr"] >= r["whole"]["psnr"]  # codes checked against the decoder never do worse
    assert result["search"]["candidates"] == 2 and 0 < result["search"]["codebook_usage"] <= 1
    assert "| astronaut | tokenizer, whole image |" in capsys.readouterr().out


def test_crop_psnr_reads_a_known_error_and_a_copy(tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(10, 200, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"c{i}.png")
    copy = lambda x: SimpleNamespace(recon=x)  # noqa: E731
    off_by_two = lambda x: SimpleNamespace(recon=x + 2 / 127.5)  # noqa: E731 (every pixel 2 levels off)
    assert photo_tokenizer.crop_psnr(off_by_two, tmp_path, 10) == pytest.approx(10 * np.log10(255**2 / 4), abs=1e-6)
    assert photo_tokenizer.crop_psnr(copy, tmp_path, 10) > 100
    with pytest.raises(FileNotFoundError):
        photo_tokenizer.crop_psnr(copy, tmp_path / "none", 10)


def test_colour_augmented_crops_permute_channels_and_keep_the_pixels(tmp_path):
    from PIL import Image

    plain = photo_tokenizer.write_crops(tmp_path / "plain", 24, 16, seed=3)
    mixed = photo_tokenizer.write_crops(tmp_path / "mixed", 24, 16, seed=3, colours=True)
    changed = 0
    for a, b in zip(sorted(plain.glob("*.png")), sorted(mixed.glob("*.png"))):
        x, y = np.asarray(Image.open(a)), np.asarray(Image.open(b))  # the same crop (the rng draws the same places)
        variants = [x[..., list(o)][:, ::f] for o in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                    for f in (1, -1)]
        assert any(np.array_equal(y, v) for v in variants)
        changed += not np.array_equal(x, y)
    assert changed >= 12  # most of 24 crops change (5 of 6 channel orders, or a mirror)


def test_grey_photos_come_as_rgb_and_join_the_crops(tmp_path):
    from PIL import Image

    camera = photo_tokenizer.photo("camera")
    assert camera.shape == (512, 512, 3) and (camera[..., 0] == camera[..., 2]).all()
    assert not set(photo_tokenizer.PHOTO_SETS["more"]) & set(photo_tokenizer.HELD_OUT)
    folder = photo_tokenizer.write_crops(tmp_path / "c", 40, 16, names=photo_tokenizer.PHOTO_SETS["more"])
    crops = [np.asarray(Image.open(f)) for f in sorted(folder.glob("*.png"))]
    grey = sum(bool((c[..., 0] == c[..., 1]).all() and (c[..., 1] == c[..., 2]).all()) for c in crops)
    assert all(c.shape == (16, 16, 3) for c in crops) and 5 <= grey <= 35  # about half the crops are grey


def test_a_time_budget_sets_the_steps_and_a_resume_keeps_them(tmp_path, monkeypatch):
    tiny = ["vq.base_channels=8", "vq.norm_groups=4", "vq.latent_dim=8", "vq.codebook_size=64", "loop.batch_size=8",
            "loop.device=\"cpu\"", "loop.ckpt_every=1"]
    argv = ["--run", str(tmp_path / "run"), "--minutes", "0.02", "--crops", "16", "--out", str(tmp_path / "r.json"),
            "--search-candidates", "0", *[a for s in tiny for a in ("--set", s)]]  # no search: not what is tested
    assert photo_tokenizer.main(argv) == 0
    first = json.loads((tmp_path / "r.json").read_text())
    assert first["minutes"] == 0.02 and first["steps"] >= 1
    monkeypatch.setattr(train.loop, "steps_for_seconds", lambda *a, **k: pytest.fail("probed again"))
    assert photo_tokenizer.main(argv) == 0  # the run is reused with its recorded step count
    assert json.loads((tmp_path / "r.json").read_text())["steps"] == first["steps"]
