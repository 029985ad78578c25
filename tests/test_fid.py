"""eval.fid: the metrics against references and known values, the cached shapes classifier, the feature resolver."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from einops import rearrange
from safetensors.torch import save_file
from torch import nn

import eval.fid as fid
from eval.errors import FeaturesError, FeaturesUnavailableError
from eval.fid import (
    ClassifierConfig,
    Features,
    frechet_distance,
    kid,
    precision_recall,
    quality_metrics,
    resolve_features,
)
from train.data import shapes

TINY = ClassifierConfig(steps=3, batch_size=8, width=4, feature_dim=8)  # trains in well under a second


def gaussian(n: int, d: int, seed: int, shift: float = 0.0, mix_seed: int = 0) -> np.ndarray:
    """n samples of a Gaussian with a full covariance (fixed by mix_seed), mean `shift`."""
    mix = np.random.default_rng(mix_seed).normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return np.random.default_rng(seed).normal(size=(n, d)) @ mix + shift


# ---------------------------------------------------------------- Fréchet distance


class _Passthrough(nn.Module):
    """A torchmetrics 'feature extractor' that returns its input: the metric then sees our features."""

    num_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_frechet_matches_torchmetrics():
    tm_fid = pytest.importorskip("torchmetrics.image.fid")
    a, b = gaussian(300, 16, seed=0), gaussian(300, 16, seed=1, shift=0.3, mix_seed=1)
    metric = tm_fid.FrechetInceptionDistance(feature=_Passthrough())
    metric.update(torch.from_numpy(a), real=True)  # float64 in: torchmetrics then returns float64
    metric.update(torch.from_numpy(b), real=False)
    expected = float(metric.compute())
    assert expected > 1.0  # a real difference, not a comparison of two zeros
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-4)


def test_frechet_is_zero_on_itself_and_grows_as_squared_mean_shift():
    a = gaussian(400, 12, seed=2)
    assert abs(frechet_distance(a, a)) < 1e-8
    rng = np.random.default_rng(3)
    for scale in (0.1, 1.0, 5.0):
        delta = rng.normal(size=12) * scale
        # a + delta has exactly a's covariance, so only the mean term remains
        assert frechet_distance(a, a + delta) == pytest.approx(delta @ delta, rel=1e-6, abs=1e-8)


def test_frechet_is_finite_with_singular_covariances():
    a, b = gaussian(10, 32, seed=4), gaussian(10, 32, seed=5)  # D > N: both covariances have rank 9
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0


# ---------------------------------------------------------------- KID, precision / recall


def test_kid_near_zero_for_one_distribution_positive_when_shifted():
    a, b = gaussian(500, 8, seed=6), gaussian(500, 8, seed=7)  # two independent samples of one Gaussian
    same = kid(a, b, subsets=50, subset_size=250)
    shifted = kid(a, gaussian(500, 8, seed=7, shift=1.0), subsets=50, subset_size=250)
    assert abs(same.mean) < 2 * same.std  # within the subset noise of 0 (the estimator is unbiased)
    assert shifted.mean > 5 * shifted.std and abs(same.mean) < 0.01 * shifted.mean
    assert abs(kid(a, a, subsets=5, subset_size=100).mean) < 0.01 * shifted.mean


def test_kid_is_deterministic_in_its_seed():
    a, b = gaussian(300, 8, seed=8), gaussian(300, 8, seed=9, shift=0.2)
    first = kid(a, b, subsets=10, subset_size=100, seed=1)
    assert kid(a, b, subsets=10, subset_size=100, seed=1) == first
    assert kid(a, b, subsets=10, subset_size=100, seed=2) != first


def test_kid_clips_subset_size_and_rejects_single_samples():
    a = np.random.default_rng(9).normal(size=(5, 4))
    clipped = kid(a, a + 1, subset_size=1000)  # subsets of 2 (half the set), so they differ
    assert np.isfinite(clipped.mean) and clipped.std > 0
    with pytest.raises(ValueError, match="at least 2"):
        kid(a[:1], a)


def test_precision_recall_identical_disjoint_and_mode_dropping():
    rng = np.random.default_rng(10)
    real = rng.normal(size=(300, 4))
    assert precision_recall(real, real) == fid.PrecisionRecall(1.0, 1.0)
    far = precision_recall(real, real + 100.0)
    assert far.precision == 0.0 and far.recall == 0.0
    # real: two modes; fake: fresh samples of one of them -> precise, but recalls half of the real set
    modes = np.concatenate([rng.normal(size=(200, 4)) - 10, rng.normal(size=(200, 4)) + 10])
    half = precision_recall(modes, rng.normal(size=(200, 4)) + 10)
    assert half.precision > 0.9 and 0.4 < half.recall < 0.55
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real[:3], real)


# ---------------------------------------------------------------- quality_metrics end to end


def pooled_colour(images: np.ndarray) -> np.ndarray:
    """Mean colour of each 6x6 block of a 24 px image: (N, 48)."""
    n = len(images)
    return images.reshape(n, 4, 6, 4, 6, 3).mean((2, 4)).reshape(n, -1) / 255


@pytest.fixture(scope="module")
def scenes24() -> np.ndarray:
    return shapes.render_batch(shapes.sample_scenes(120, seed=11, split="all"), 24)


def test_quality_metrics_end_to_end(scenes24):
    real, other = scenes24[:60], scenes24[60:]
    noise = np.random.default_rng(12).integers(0, 256, size=real.shape, dtype=np.uint8)
    same = quality_metrics(real, real, pooled_colour, batch_size=16)  # batches smaller than the sets
    assert abs(same.fid) < 1e-6 and same.precision == 1.0 and same.recall == 1.0
    assert same.kid_mean == pytest.approx(0.0, abs=1e-3)
    fresh = quality_metrics(real, other, pooled_colour)
    bad = quality_metrics(real, noise, pooled_colour)
    assert 0 < fresh.fid < bad.fid / 5 and bad.kid_mean > fresh.kid_mean
    assert bad.precision < fresh.precision
    d = bad.to_dict()
    assert d["n_real"] == 60 and d["n_fake"] == 60 and d["feature_name"] == "pooled_colour" and d["feature_dim"] == 48
    assert set(d) == {f.name for f in dataclasses.fields(fid.QualityReport)}


def test_quality_metrics_rejects_bad_inputs(scenes24):
    with pytest.raises(ValueError, match="at least 2"):
        quality_metrics(scenes24[:1], scenes24, pooled_colour)
    with pytest.raises(ValueError, match="uint8"):
        quality_metrics(scenes24.astype(np.float32), scenes24, pooled_colour)
    with pytest.raises(ValueError, match="square"):
        quality_metrics(scenes24[:, :20], scenes24, pooled_colour)
    big = shapes.render_batch(shapes.sample_scenes(4, seed=13), 32)
    per_row = lambda x: x[:, :, 0, 0].astype(float)  # noqa: E731  (R-d: cannot compare two resolutions)
    with pytest.raises(ValueError, match="resolutions 24 and 32"):
        quality_metrics(scenes24[:4], big, per_row)
    with pytest.raises(ValueError, match=r"expected \(N, D\)"):
        quality_metrics(scenes24[:4], scenes24[:4], lambda x: x.sum((1, 2, 3)).astype(float))
    with pytest.raises(ValueError, match="non-finite"):
        quality_metrics(scenes24[:4], scenes24[:4], lambda x: np.full((len(x), 2), np.nan))


# ---------------------------------------------------------------- the shapes classifier


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tessera-cache")


@pytest.fixture(scope="module")
def tiny_features(cache) -> Features:
    return fid.classifier_features(cache_dir=cache, cfg=TINY, progress=False)


def test_classifier_features_any_resolution(tiny_features, scenes24):
    f24 = tiny_features.fn(scenes24[:5])
    f48 = tiny_features.fn(shapes.render_batch(shapes.sample_scenes(5, seed=11, split="all"), 48))
    assert f24.shape == f48.shape == (5, TINY.feature_dim) and f24.dtype == np.float64
    assert np.array_equal(tiny_features.fn(scenes24[:5]), f24)  # eval mode: no batch-statistics drift
    assert tiny_features.name == TINY.cache_name()
    report = quality_metrics(scenes24[:20], shapes.render_batch(shapes.sample_scenes(20, seed=14), 48), tiny_features)
    assert report.feature_dim == TINY.feature_dim and np.isfinite(report.fid)  # resolutions may differ here


def test_training_is_seeded_and_save_load_is_exact(tmp_path, scenes24):
    model = fid.train_shapes_classifier(TINY, progress=False)
    again = fid.train_shapes_classifier(TINY, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), again.state_dict().values()))
    fid.save_classifier(model, TINY, tmp_path / "clf", {"cell_accuracy": 0.5})
    loaded = fid.load_classifier(tmp_path / "clf")
    x = torch.from_numpy(scenes24[:8])
    with torch.no_grad():
        assert torch.equal(model.eval()(x).features, loaded(x).features)
        assert torch.equal(model(x).logits, loaded(x).logits)
    meta = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert meta["version"] == ClassifierConfig.VERSION and meta["metrics"]["cell_accuracy"] == 0.5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_features_have_unit_scale_on_clean_renders():
    model = fid.train_shapes_classifier(TINY, progress=False)
    assert float(model.feature_scale) != 1.0  # set after training, saved with the weights
    images = shapes.render_batch(shapes.sample_scenes(300, seed=21, split="all"), 32)
    with torch.no_grad():
        rms = model(torch.from_numpy(images)).features.pow(2).mean().sqrt()
    assert 0.8 < float(rms) < 1.25  # other scenes than the ones the scale was set on


def test_cache_is_reused_and_keyed_by_config(cache, tiny_features, scenes24, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds this config")

    monkeypatch.setattr(fid, "train_shapes_classifier", no_training)
    cached = fid.classifier_features(cache_dir=cache, cfg=TINY, progress=False)
    assert np.array_equal(cached.fn(scenes24[:4]), tiny_features.fn(scenes24[:4]))
    meta = json.loads((cache / TINY.cache_name() / "config.json").read_text())
    assert 0 <= meta["metrics"]["cell_accuracy"] <= 1 and meta["metrics"]["train_seconds"] >= 0
    changed = dataclasses.replace(TINY, seed=1)
    assert changed.cache_name() != TINY.cache_name()
    with pytest.raises(AssertionError, match="retrained"):  # a changed config never reads the old directory
        fid.classifier_features(cache_dir=cache, cfg=changed, progress=False)


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TESSERA_CACHE", str(tmp_path))
    assert fid.default_cache_dir() == tmp_path
    monkeypatch.delenv("TESSERA_CACHE")
    assert fid.default_cache_dir() == fid.Path("~/.cache/tessera").expanduser()


def test_load_classifier_errors_name_the_file(cache, tiny_features, tmp_path):
    import shutil

    src = cache / TINY.cache_name()

    def broken(name: str):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    d = broken("garbage-weights")
    (d / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(FeaturesError, match="model.safetensors"):
        fid.load_classifier(d)
    d = broken("no-weights")
    (d / "model.safetensors").unlink()
    with pytest.raises(FeaturesError, match="model.safetensors is missing"):
        fid.load_classifier(d)
    d = broken("no-config")
    (d / "config.json").unlink()
    with pytest.raises(FeaturesError, match="config.json is missing"):
        fid.load_classifier(d)
    for name, edit, message in [("old", {"version": 0}, "version 0"), ("foreign", {"format": "x"}, "not a shapes"),
                                ("bad-config", {"config": {"nope": 1}}, "invalid")]:
        d = broken(name)
        meta = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**meta, **edit}))
        with pytest.raises(FeaturesError, match=message):
            fid.load_classifier(d)
    d = broken("wrong-shapes")
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["width"] = 8  # weights saved for width 4
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(FeaturesError, match="model.safetensors"):
        fid.load_classifier(d)


# ---------------------------------------------------------------- resolve_features / inception


class SneakyDict(collections.OrderedDict):
    """A class torch.load(weights_only=True) must refuse to unpickle."""


def test_resolve_callables_and_unknown_specs(tiny_features):
    assert resolve_features(pooled_colour) == Features("pooled_colour", pooled_colour)
    assert resolve_features(tiny_features) is tiny_features

    class Extractor:
        def __call__(self, images):
            return pooled_colour(images)

    assert resolve_features(Extractor()).name == "custom"
    for spec in ("inceptionv3", "inception:", "clip"):
        with pytest.raises(ValueError, match="'classifier'.*'inception:PATH'.*callable"):
            resolve_features(spec)


def test_inception_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        resolve_features(f"inception:{tmp_path / 'nowhere.pth'}")


@pytest.mark.parametrize("payload", [
    {"w": SneakyDict(a=torch.zeros(2))},  # a pickled class inside the dict
    SneakyDict(w=torch.zeros(2)),  # the dict itself is a custom class
])
def test_inception_refuses_pickled_objects(tmp_path, payload):
    path = tmp_path / "weights.pth"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="refusing .*weights.pth.*plain state dicts"):
        resolve_features(f"inception:{path}")


def test_inception_refuses_non_state_dicts(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="flat state dict"):
        resolve_features(f"inception:{tmp_path / 'list.pth'}")
    (tmp_path / "junk.pth").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="refusing"):
        resolve_features(f"inception:{tmp_path / 'junk.pth'}")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_inception_without_torch_fidelity_says_how_to_install(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"inception{suffix}"
    state = {"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}  # a plain state dict passes the checks
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import fails whether or not it is installed
    with pytest.raises(FeaturesUnavailableError, match="pip install torch-fidelity torchvision.*'classifier'"):
        resolve_features(f"inception:{path}")
    assert issubclass(FeaturesUnavailableError, ImportError)


def test_inception_features_from_a_local_file_match_torch_fidelity(tmp_path):
    """Skipped where torch-fidelity is absent (CI: it needs torchvision); run where it is installed."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")

    # weights the test makes itself: torch-fidelity's architecture at its random init, nothing downloaded
    cls = fe.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(cls, "load_state_dict", lambda self, *a, **k: None)
        ref = cls("inception-v3-compat", ["2048"])
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    torch.save(state, tmp_path / "w.pth")
    save_file(state, str(tmp_path / "w.safetensors"))
    images = shapes.render_batch(shapes.sample_scenes(6, seed=3, split="all"), 24)
    with torch.no_grad():
        want = ref(rearrange(torch.from_numpy(images), "b h w c -> b c h w").contiguous())[0].double().numpy()
    for name in ("w.pth", "w.safetensors"):
        feats = resolve_features(f"inception:{tmp_path / name}")
        got = feats.fn(images)
        assert got.shape == (6, 2048) and np.allclose(got, want, rtol=1e-5, atol=1e-12), name
