"""Invariants of the VQ tokenizer on tiny models, on the CPU.

encode shapes / ranges, codes -> latent == forward's quantized latent (what
vector-quantize-pytorch gets wrong for image feature maps), one batch overfits, save/load
reproduces codes and images, clear errors, and the single-optimizer gradient
routing of TokenizerLoss.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vqtok import (
    CheckpointError,
    ConfigError,
    PerceptualLoss,
    TokenizerLoss,
    VQConfig,
    VQTokenizer,
    codebook_usage,
    images_to_tensor,
    load_tokenizer,
    read_tokenizer_config,
    save_tokenizer,
    tensor_to_images,
    vgg16_feature_shapes,
)

QUANTIZERS = ("vq", "fsq", "lfq")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models here are tiny: one thread is about as fast as two, and it does not
    # slow down 10x when another process shares the cores (OpenMP oversubscription).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(quantizer: str, **overrides) -> VQConfig:
    """16 px, 4x downsample -> 4x4 codes; ~120k parameters."""
    base = dict(
        resolution=16, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, latent_dim=16,
        quantizer=quantizer, codebook_size=64, codebook_dim=8, fsq_levels=(4, 4, 4),
    )
    base.update(overrides)
    return VQConfig(**base)


def squares(n: int = 8, res: int = 16, seed: int = 0) -> torch.Tensor:
    """n images (n, 3, res, res) in [-1, 1]: a coloured square on a plain coloured background."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.zeros(n, res, res, 3, dtype=torch.uint8)
    for i in range(n):
        bg, fg = torch.randint(0, 256, (2, 3), generator=g).to(torch.uint8)
        imgs[i] = bg
        s = int(torch.randint(4, res // 2 + 1, (1,), generator=g))
        y, x = torch.randint(0, res - s + 1, (2,), generator=g).tolist()
        imgs[i, y : y + s, x : x + s] = fg
    return images_to_tensor(imgs)


def trained_a_little(quantizer: str, steps: int = 5) -> tuple[VQTokenizer, torch.Tensor]:
    """A tiny tokenizer after a few training steps (so EMA codebooks and dead-code refresh have run)."""
    torch.manual_seed(0)
    cfg = tiny_config(quantizer)
    model, loss_fn, x = VQTokenizer(cfg), TokenizerLoss(cfg), squares()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        opt.zero_grad()
        loss_fn(model, x, step).loss.backward()
        opt.step()
    return model.eval(), x


# ---------------------------------------------------------------------------
# config


def test_vqtok_imports_no_other_package():
    # vqtok is a library a notebook can use alone, the lowest layer: it imports none of Tessera's other
    # packages (ar_model, baseline, pipelines, train, eval, tessera) nor their heavy dependencies
    code = (
        "import sys, vqtok; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'train', 'eval', 'ar_model', 'baseline', 'pipelines', 'tessera', 'transformers', 'diffusers', "
        "'datasets', 'wandb'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_config_roundtrip_and_properties():
    cfg = VQConfig()
    assert (cfg.resolution, cfg.downsample, cfg.grid_size) == (32, 4, 8)
    d = cfg.to_dict()
    assert d["channel_mult"] == [1, 2, 2] and isinstance(d["fsq_levels"], list)
    assert VQConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert VQConfig(quantizer="fsq", fsq_levels=(8, 5, 5, 5)).num_codes == 1000
    assert VQConfig(quantizer="lfq", codebook_size=512).num_codes == 512


def test_decoder_width_and_depth_are_its_own():
    """decoder_channels / decoder_res_blocks widen and deepen the decoder alone; 0 keeps it the encoder's mirror."""
    from vqtok.model import Decoder, Encoder

    def n_params(m):
        return sum(p.numel() for p in m.parameters())

    base = VQConfig(base_channels=16, norm_groups=4)
    wide = base.replace(decoder_channels=32, decoder_res_blocks=2)
    assert n_params(Encoder(wide)) == n_params(Encoder(base))
    assert n_params(Decoder(wide)) > 3 * n_params(Decoder(base))
    assert n_params(Decoder(base.replace(decoder_channels=16, decoder_res_blocks=1))) == n_params(Decoder(base))
    z = torch.randn(2, base.latent_dim, 8, 8)
    assert Decoder(wide)(z).shape == Decoder(base)(z).shape == (2, 3, 32, 32)


def test_space_to_depth_folds_pixels_into_channels(tmp_path):
    """space_to_depth = 2: the encoder's first conv sees 2x2 blocks of pixels as 12 channels (no conv at full
    resolution), the decoder unfolds 12 channels back into pixels; the downsampling counts the fold, and the
    field travels with a saved tokenizer."""
    from vqtok.model import Decoder, Encoder

    cfg = VQConfig(base_channels=16, norm_groups=4, channel_mult=(1, 2), space_to_depth=2)
    assert (cfg.downsample, cfg.grid_size) == (4, 8)  # 2 (fold) * 2 (one level's /2)
    enc, dec = Encoder(cfg), Decoder(cfg)
    assert enc.conv_in.in_channels == 12 and dec.conv_out.out_channels == 12
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = []
    enc.conv_in.register_forward_hook(lambda m, i, o: feats.append(o.shape[-2:]))
    assert enc(x).shape == (2, cfg.latent_dim, 8, 8) and feats == [(16, 16)]  # first conv at half resolution
    assert dec(torch.randn(2, cfg.latent_dim, 8, 8)).shape == (2, 3, 32, 32)
    tok = VQTokenizer(cfg).eval()
    save_tokenizer(tok, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.cfg.space_to_depth == 2
    with torch.no_grad():
        assert torch.equal(again.encode(x).codes, tok.encode(x).codes)


def test_pixel_norm_makes_codes_independent_of_the_image_size():
    """norm = "pixel": a code far from the border is the same whether its crop or a larger image around it is
    encoded (GroupNorm's statistics over the whole map change every code)."""
    torch.manual_seed(0)
    kw = dict(resolution=32, base_channels=16, norm_groups=4, channel_mult=(1,), space_to_depth=4, latent_dim=8,
              codebook_size=64)
    big = torch.rand(1, 3, 128, 128) * 2 - 1  # 32x32 codes; a crop of 16x16 codes; 4 convs see 4 codes around
    for norm, same in (("pixel", True), ("group", False)):
        tok = VQTokenizer(VQConfig(norm=norm, **kw)).eval()
        with torch.no_grad():
            inner = (tok.encode(big).codes[:, 5:11, 5:11] == tok.encode(big[..., :64, :64]).codes[:, 5:11, 5:11])
        assert bool(inner.all()) is same, norm


def test_replace_returns_validated_copy():
    cfg = VQConfig()
    new = cfg.replace(codebook_size=512)
    assert new.codebook_size == 512 and cfg.codebook_size == 256
    with pytest.raises(ConfigError, match="quantizer"):
        cfg.replace(quantizer="rvq")
    with pytest.raises(ConfigError, match="codebok_size"):
        cfg.replace(codebok_size=3)


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"codebok_size": 3}, ["unknown VQConfig key 'codebok_size'", "codebook_size"]),
        ({"quantizer": "rvq"}, ["quantizer", "'rvq'"]),
        ({"resolution": 30}, ["resolution=30", "downsample"]),
        ({"quantizer": "lfq", "codebook_size": 100}, ["codebook_size=100", "power of 2"]),
        ({"commitment_weight": -1.0}, ["commitment_weight", "-1.0"]),
        ({"perceptual_weight": 1.0}, ["perceptual_weights"]),
        ({"recon_loss": "huber"}, ["recon_loss", "'huber'"]),
        ({"resolution": "32"}, ["resolution", "'32'"]),
        ({"fsq_levels": [8, 1]}, ["fsq_levels"]),
        ({"fsq_levels": [8, 2]}, ["fsq_levels", "3"]),  # the library asserts on a level of 2
        ({"decoder_channels": 12}, ["norm_groups=8", "decoder_channels * channel_mult = 12"]),
        ({"decoder_res_blocks": -1}, ["decoder_res_blocks", "-1"]),
        ({"architecture": "patch", "decoder_channels": 64}, ["decoder_channels", "conv"]),
        ({"space_to_depth": 0}, ["space_to_depth", "0"]),
        ({"norm": "batch"}, ["norm", "'batch'"]),
        ({"architecture": "patch", "space_to_depth": 2}, ["space_to_depth", "conv"]),
        ({"resolution": 32, "space_to_depth": 3}, ["resolution=32", "downsample"]),
    ],
)
def test_config_errors_name_the_field(bad, words):
    with pytest.raises(ConfigError) as e:
        VQConfig.from_dict({**VQConfig().to_dict(), **bad})
    for w in words:
        assert w in str(e.value)


# ---------------------------------------------------------------------------
# model


def test_image_conversion_roundtrip():
    u8 = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = images_to_tensor(u8)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert torch.equal(tensor_to_images(x), torch.from_numpy(u8))
    with pytest.raises(ValueError):
        images_to_tensor(u8[0])  # no batch dimension


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_encode_decode_shapes(quantizer):
    cfg = tiny_config(quantizer)
    model = VQTokenizer(cfg).eval()
    x = squares(n=3)
    with torch.no_grad():
        enc = model.encode(x)
        out = model.decode(enc.codes)
    g = cfg.grid_size
    assert enc.codes.shape == (3, g, g) and enc.codes.dtype == torch.int64
    assert 0 <= int(enc.codes.min()) and int(enc.codes.max()) < cfg.num_codes
    assert enc.quantized.shape == (3, cfg.latent_dim, g, g)
    assert out.shape == (3, 3, cfg.resolution, cfg.resolution)
    with pytest.raises(ValueError, match="codes must lie in"):
        model.decode(torch.full((1, g, g), cfg.num_codes))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_codes_roundtrip_equals_forward(quantizer):
    # decode(codes) must equal decoding the forward pass's quantized latent
    # (vector-quantize-pytorch's VectorQuantize.get_output_from_indices projects along the wrong axis
    # with accept_image_fmap=True and codebook_dim != dim; Quantizer feeds (B, h*w, D) sequences to avoid it)
    model, x = trained_a_little(quantizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        enc = model.encode(x)
        for k, v in model.state_dict().items():  # eval mode: no EMA / dead-code update of the codebook
            assert torch.equal(v, before[k]), k
        latent = model.quantizer.codes_to_latent(enc.codes)
        torch.testing.assert_close(latent, enc.quantized, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.decode(enc.codes), model(x).recon, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_tiny_model_overfits_one_batch(quantizer):
    torch.manual_seed(0)
    cfg = tiny_config(quantizer)
    assert cfg.recon_loss == "l2"  # compared below with the discrete path's squared error
    model, loss_fn, x = VQTokenizer(cfg), TokenizerLoss(cfg), squares()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    recon = []
    for step in range(200):  # seeds 0-3, 1 or 2 threads: all end below 0.18x the first loss
        out = loss_fn(model, x, step)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        recon.append(out.metrics["recon"])  # the config's recon loss: mean squared error
    assert recon[-1] < 0.3 * recon[0], (recon[0], recon[-1])
    model.eval()
    with torch.no_grad():  # the discrete path, from stored codes, is as good (same metric: MSE)
        err = (model.decode(model.encode(x).codes) - x).pow(2).mean().item()
    assert err < 0.3 * recon[0], (recon[0], err)


def test_codebook_usage():
    assert codebook_usage(torch.tensor([[0, 1], [1, 3]]), 8) == 3 / 8


def test_sparse_codebook_trains_as_the_library_does():
    """SparseCodebook (by index) gives the library's one-hot path's codes, vectors, loss and codebook buffers,
    bit for bit in fp32, dead-code refreshes included; under CPU bf16 autocast it picks codes in fp32."""
    import copy

    from vector_quantize_pytorch import VectorQuantize

    from vqtok.model import SparseCodebook

    torch.manual_seed(0)
    lib = VectorQuantize(dim=16, codebook_size=64, codebook_dim=4, use_cosine_sim=True, decay=0.9,
                         threshold_ema_dead_code=2.0, commitment_weight=0.25)
    ours = copy.deepcopy(lib)
    ours._codebook.__class__ = SparseCodebook
    refreshes = []
    replace = ours._codebook.replace
    ours._codebook.replace = lambda *a, **k: (refreshes.append(1), replace(*a, **k))[1]
    for step in range(4):
        x = torch.randn(4, 32, 16)  # (B, N, D)
        torch.manual_seed(step)  # dead-code refreshes draw from the RNG
        q1, i1, l1 = lib(x)
        torch.manual_seed(step)
        q2, i2, l2 = ours(x)
        assert torch.equal(i1, i2) and torch.equal(q1, q2) and torch.equal(l1, l2)
        for name in ("embed", "embed_avg", "cluster_size"):
            assert torch.equal(getattr(lib._codebook, name), getattr(ours._codebook, name)), (step, name)
    assert refreshes  # dead codes were re-seeded on the way
    ours.eval(), lib.eval()
    x = torch.nn.functional.normalize(torch.randn(2, 512, 4), dim=-1)  # the codebook's input: unit vectors
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, codes, _ = ours._codebook(x)
        _, library_bf16, _ = lib._codebook(x)  # the library's path under this autocast picks ~4% other codes
    _, exact, _ = lib._codebook(x)  # fp32: the nearest codes
    assert torch.equal(codes, exact) and not torch.equal(library_bf16, exact)


# ---------------------------------------------------------------------------
# save / load


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_save_load_reproduces_codes_and_images(tmp_path, quantizer):
    model, x = trained_a_little(quantizer)
    out = save_tokenizer(model, tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "tessera.vqtok" and meta["version"] == 1
    loaded = load_tokenizer(out)
    assert not loaded.training and loaded.cfg == model.cfg
    assert read_tokenizer_config(out) == model.cfg
    with torch.no_grad():
        codes, codes2 = model.encode(x).codes, loaded.encode(x).codes
        assert torch.equal(codes, codes2)
        assert torch.equal(model.decode(codes), loaded.decode(codes2))


def test_save_replaces_existing_directory(tmp_path):
    a, _ = trained_a_little("fsq", steps=0)
    b = VQTokenizer(tiny_config("fsq", latent_dim=8))
    save_tokenizer(a, tmp_path / "tok")
    save_tokenizer(b, tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").cfg.latent_dim == 8
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temporary / old directories left


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_tokenizer(tmp_path / "empty")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="not a Tessera tokenizer config"):
        load_tokenizer(foreign)

    model = VQTokenizer(tiny_config("vq"))
    good = save_tokenizer(model, tmp_path / "good")
    meta = json.loads((good / "config.json").read_text())

    meta_v2 = {**meta, "version": 2}
    (good / "config.json").write_text(json.dumps(meta_v2))
    with pytest.raises(CheckpointError, match="version 2"):
        load_tokenizer(good)

    meta_bad = {**meta, "config": {**meta["config"], "codebok_size": 3}}
    (good / "config.json").write_text(json.dumps(meta_bad))
    with pytest.raises(CheckpointError, match="unknown VQConfig key 'codebok_size'"):
        load_tokenizer(good)

    # weights from another config: shape mismatches are named
    meta_other = {**meta, "config": {**meta["config"], "latent_dim": 8}}
    (good / "config.json").write_text(json.dumps(meta_other))
    with pytest.raises(CheckpointError, match=r"shape mismatch.*encoder\.conv_out\.weight"):
        load_tokenizer(good)

    # weights of another quantizer: missing / unexpected keys are named
    meta_fsq = {**meta, "config": {**meta["config"], "quantizer": "fsq"}}
    (good / "config.json").write_text(json.dumps(meta_fsq))
    with pytest.raises(CheckpointError, match=r"unexpected .*quantizer\.impl\._codebook"):
        load_tokenizer(good)

    (good / "config.json").write_text(json.dumps(meta))
    (good / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_tokenizer(good)


# ---------------------------------------------------------------------------
# losses


def _disc_grads(loss_fn: TokenizerLoss) -> list[torch.Tensor | None]:
    return [p.grad for p in loss_fn.discriminator.parameters()]


def test_adversarial_gradients_are_routed():
    torch.manual_seed(0)
    cfg = tiny_config("fsq", disc_weight=0.5, disc_start=10, disc_channels=8, disc_layers=2)
    model, loss_fn, x = VQTokenizer(cfg).eval(), TokenizerLoss(cfg), squares(n=4)

    # before disc_start: no adversarial terms, no gradients on the discriminator
    out = loss_fn(model, x, step=9)
    out.loss.backward()
    assert "d_loss" not in out.metrics and "g_adv" not in out.metrics
    assert all(g is None for g in _disc_grads(loss_fn))
    model.zero_grad(set_to_none=True)

    # the generator's term alone reaches the tokenizer, never the discriminator
    recon = model(x).recon
    loss_fn.generator_adv_loss(recon).backward()
    assert all(g is None for g in _disc_grads(loss_fn))
    assert model.decoder.conv_out.weight.grad is not None and model.decoder.conv_out.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    # the discriminator's term alone reaches the discriminator, never the tokenizer
    loss_fn.discriminator_loss(x, model(x).recon).backward()
    d_only = [g.clone() for g in _disc_grads(loss_fn)]
    assert all(p.grad is None for p in model.parameters())
    loss_fn.zero_grad(set_to_none=True)

    # after disc_start, one backward of the whole loss: the discriminator's gradients
    # are exactly those of its own hinge loss (the model is deterministic in eval mode)
    out = loss_fn(model, x, step=10)
    out.loss.backward()
    assert {"recon", "quant", "g_adv", "d_loss"} <= set(out.metrics)
    for g, ref in zip(_disc_grads(loss_fn), d_only):
        torch.testing.assert_close(g, ref)
    assert loss_fn.trainable_parameters() == list(loss_fn.discriminator.parameters())


def test_decoder_only_phase_trains_the_decoder_and_leaves_codes_alone():
    torch.manual_seed(0)
    cfg = tiny_config("vq", decoder_only_from=5, dead_code_threshold=100.0)  # every code would be refreshed
    model, loss_fn, x = VQTokenizer(cfg).train(), TokenizerLoss(cfg), squares(n=4)
    codebook = model.quantizer.impl._codebook.embed.clone()

    # before the phase: everything trains, and the codebook's EMA / dead-code refresh move the codes
    loss_fn(model, x, step=4).loss.backward()
    assert model.encoder.conv_in.weight.grad is not None
    assert not torch.equal(model.quantizer.impl._codebook.embed, codebook)
    model.zero_grad(set_to_none=True)

    # in it: the decoder alone gets gradients, the codebook stays as it was, and the model keeps its mode
    codebook = model.quantizer.impl._codebook.embed.clone()
    out = loss_fn(model, x, step=5)
    out.loss.backward()
    assert model.training and model.quantizer.training
    assert all(p.grad is None for p in (*model.encoder.parameters(), *model.quantizer.parameters()))
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0
    assert torch.equal(model.quantizer.impl._codebook.embed, codebook)
    assert out.metrics["quant"] == 0.0 and out.metrics["recon"] > 0
    with torch.no_grad():  # the loss is the reconstruction of the codes the frozen tokenizer gives
        model.eval()
        ref = (model.decode(model.encode(x).codes) - x).pow(2).mean()
    assert out.metrics["recon"] == pytest.approx(float(ref), rel=1e-5)


def _random_vgg16_file(path, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in vgg16_feature_shapes().items()}
    save_file(tensors, str(path))


def test_perceptual_loss(tmp_path):
    path = tmp_path / "vgg16.safetensors"
    _random_vgg16_file(path)
    perc = PerceptualLoss(path)
    assert perc.state_dict() == {} and list(perc.parameters()) == []  # frozen, out of checkpoints
    x = squares(n=2, res=32)
    y = squares(n=2, res=32, seed=1)
    assert perc(x, x).item() == 0.0
    assert perc(x, y).item() > 0.0
    xr = x.clone().requires_grad_(True)
    perc(xr, y).backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0

    with pytest.raises(CheckpointError, match="missing.safetensors"):
        PerceptualLoss(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(bad))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*missing 25"):
        PerceptualLoss(bad)


def test_tokenizer_loss_with_perceptual_term(tmp_path):
    path = tmp_path / "vgg16.safetensors"
    _random_vgg16_file(path)
    cfg = tiny_config("vq", resolution=32, perceptual_weight=0.1, perceptual_weights=str(path))
    loss_fn = TokenizerLoss(cfg)
    out = loss_fn(VQTokenizer(cfg), squares(n=2, res=32), step=0)
    assert out.metrics["perc"] > 0 and set(out.metrics) >= {"recon", "quant", "usage", "perc"}
    assert all(isinstance(v, float) for v in out.metrics.values())


def test_patch_codes_are_local_and_decode_to_their_own_patch():
    """architecture="patch": a patch's code depends on its pixels alone, and a code decodes to its patch alone,
    so an edit elsewhere leaves every untouched patch's code (and pixels) as they were; the conv net's do not."""
    torch.manual_seed(0)
    x = squares(2)  # (2, 3, 16, 16)
    y = x.clone()
    y[:, :, :4, :4] = -x[:, :, :4, :4]  # change the top-left 4x4 patch only
    for arch, local in (("patch", True), ("conv", False)):
        model = VQTokenizer(tiny_config("vq", architecture=arch)).eval()
        with torch.no_grad():
            a, b = model.encode(x).codes, model.encode(y).codes  # (2, 4, 4) codes of 4x4 patches
            za = model.quantizer.codes_to_latent(a)
        untouched = torch.ones_like(a, dtype=torch.bool)
        untouched[:, 0, 0] = False
        assert torch.equal(a[untouched], b[untouched]) == local, arch
        if local:
            swapped = a.clone()
            swapped[:, 0, 0] = (a[:, 0, 0] + 1) % model.cfg.num_codes
            with torch.no_grad():
                da, db = model.decode(a), model.decode(swapped)
            same = torch.ones(16, 16, dtype=torch.bool)
            same[:4, :4] = False
            assert torch.equal(da[..., same], db[..., same]) and not torch.equal(da, db)
            assert za.shape[-2:] == a.shape[-2:]
    with pytest.raises(ConfigError, match="architecture"):
        tiny_config("vq", architecture="vit")


def test_patch_context_draws_a_patch_from_its_neighbours_codes_only():
    """patch_context=1: codes stay local; a code now shapes its own patch and the 8 around it, nothing further."""
    torch.manual_seed(0)
    model = VQTokenizer(tiny_config("vq", architecture="patch", patch_context=1)).eval()
    x = squares(2)
    y = x.clone()
    y[:, :, :4, :4] = -x[:, :, :4, :4]
    with torch.no_grad():
        a, b = model.encode(x).codes, model.encode(y).codes
        swapped = a.clone()
        swapped[:, 0, 0] = (a[:, 0, 0] + 1) % model.cfg.num_codes
        da, db = model.decode(a), model.decode(swapped)
    assert torch.equal(a[:, 1:], b[:, 1:]) and torch.equal(a[:, 0, 1:], b[:, 0, 1:])  # encoder: still local
    near = torch.zeros(16, 16, dtype=torch.bool)
    near[:8, :8] = True  # the patch (0, 0) and its neighbours (0, 1), (1, 0), (1, 1)
    assert torch.equal(da[..., ~near], db[..., ~near]) and not torch.equal(da[..., near], db[..., near])
