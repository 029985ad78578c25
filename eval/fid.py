"""Distribution-level image quality: FID, KID and precision/recall on one of three feature sources.

    resolve_features(spec) -> Features(name, fn)      fn: uint8 (N, R, R, 3) -> float (N, D)
    quality_metrics(real, fake, spec) -> QualityReport

Feature sources (`spec`):
    "classifier"      (default) a small CNN trained here on the shapes world, cached on disk, fully offline
    "inception:PATH"  Inception-v3 pool features (2048-d) from a local weights file, via torchmetrics/torch-fidelity
    a callable        used as it is

The metrics take feature arrays, not images, so a harness computes each image set's
features once and reuses them for every metric and comparison.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_model
from scipy import linalg
from torch import nn
from tqdm.auto import tqdm

from eval.errors import FeaturesError, FeaturesUnavailableError
from train.data import shapes

log = logging.getLogger(__name__)

FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, R, R, 3) -> float (N, D)


@dataclass(frozen=True)
class Features:
    name: str  # recorded in reports: FIDs on different features are not comparable
    fn: FeatureFn


# ---------------------------------------------------------------- metrics on features


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D), in float64.

    Hand-written rather than torchmetrics' FrechetInceptionDistance: that class bundles
    feature extraction with its running state, while the harness computes features once,
    caches them and reuses them for FID, KID and precision/recall on three feature sources.
    """
    # after: Heusel et al. 2017 (FID); near-singular handling after pytorch-fid
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)  # (D,)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))  # (D, D)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product (e.g. D > N): nudge both covariances off singularity
        log.warning("Fréchet distance: singular covariance product, adding %g to the diagonals", eps)
        offset = np.eye(len(s1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = np.real(covmean)  # rounding leaves a tiny imaginary part
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@dataclass(frozen=True)
class KID:
    mean: float
    std: float  # over subsets (population std, as torch-fidelity reports it)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> KID:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, averaged over random subsets.

    Sets smaller than subset_size use subsets of half the smaller set, so the subsets differ
    and `std` says how much the estimate moves (subsets of the whole set would all be equal).
    """
    # after: Bińkowski et al. 2018, "Demystifying MMD GANs"
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = min(len(a), len(b))
    m = subset_size if n >= subset_size else max(2, n // 2)
    if n < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    scores = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]  # (m, D)
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))  # (m, m) each
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))  # drop i == j: unbiased
        scores.append(within - 2 * kxy.mean())
    return KID(float(np.mean(scores)), float(np.std(scores)))


def _knn_radii(x: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point of x (N, D) to its k-th nearest other point, (N,)."""
    # k + 1: the point itself is its own nearest neighbour at distance 0
    return torch.cat([torch.cdist(x[i : i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), chunk)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """Share of points inside at least one ball (centre, radius)."""
    inside = [(torch.cdist(points[i : i + chunk], centres) <= radii).any(1) for i in range(0, len(points), chunk)]
    return float(torch.cat(inside).double().mean())


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float  # share of fake samples inside the real manifold
    recall: float  # share of real samples inside the fake manifold


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall: each set's manifold is the union of k-NN balls around its samples."""
    # after: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models"
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(real)} and {len(fake)}")
    r, f = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    return PrecisionRecall(_covered(f, r, _knn_radii(r, k)), _covered(r, f, _knn_radii(f, k)))


# ---------------------------------------------------------------- images -> report


@dataclass
class QualityReport:
    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    n_real: int
    n_fake: int
    feature_name: str
    feature_dim: int

    def to_dict(self) -> dict:
        return asdict(self)


def _check_images(images: np.ndarray, what: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = f"{type(images).__name__} {getattr(images, 'dtype', '')} {getattr(images, 'shape', '')}"
        raise ValueError(f"{what} must be a uint8 numpy array (N, R, R, 3), got {got}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"{what} must be square, got {images.shape[1]}x{images.shape[2]}")
    if len(images) < 2:
        raise ValueError(f"{what} has {len(images)} image(s); the metrics need at least 2 per set")


def extract_features(images: np.ndarray, fn: FeatureFn, batch_size: int = 256) -> np.ndarray:
    """fn over images in batches -> float64 (N, D), checked for shape and finiteness."""
    feats = np.concatenate([np.asarray(fn(images[i : i + batch_size]), np.float64)
                            for i in range(0, len(images), batch_size)])
    if feats.ndim != 2 or len(feats) != len(images):
        raise ValueError(f"feature function gave shape {feats.shape} for {len(images)} images; expected (N, D)")
    if not np.isfinite(feats).all():
        raise ValueError("feature function returned non-finite values")
    return feats


def report_from_features(real: np.ndarray, fake: np.ndarray, feature_name: str) -> QualityReport:
    """All metrics on precomputed features (N, D) and (M, D)."""
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    k = min(3, len(real) - 1, len(fake) - 1)  # the paper's k = 3, fewer only for tiny sets
    kd, pr = kid(real, fake), precision_recall(real, fake, k)
    return QualityReport(frechet_distance(real, fake), kd.mean, kd.std, pr.precision, pr.recall,
                         len(real), len(fake), feature_name, real.shape[1])


def quality_metrics(real_images: np.ndarray, fake_images: np.ndarray,
                    features: str | FeatureFn | Features = "classifier", batch_size: int = 256) -> QualityReport:
    """FID, KID and precision/recall of fake_images against real_images, both uint8 (N, R, R, 3)."""
    _check_images(real_images, "real_images")
    _check_images(fake_images, "fake_images")
    feats = resolve_features(features)
    real, fake = (extract_features(x, feats.fn, batch_size) for x in (real_images, fake_images))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"features '{feats.name}' gave {real.shape[1]}-d real and {fake.shape[1]}-d fake features "
                         f"(resolutions {real_images.shape[1]} and {fake_images.shape[1]}): use one resolution")
    return report_from_features(real, fake, feats.name)


# ---------------------------------------------------------------- the shapes-world classifier

NUM_CLASSES = 1 + len(shapes.COLOURS) * len(shapes.SHAPES)  # per cell: empty, or colour x shape (19)
CELLS = shapes.GRID * shapes.GRID
FORMAT = "tessera.shapes-classifier"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    VERSION: ClassVar[int] = 2  # bump when the architecture or recipe changes: old caches are then never read
    steps: int = 800  # ~60 s on 2 idle CPU cores for 99.8% per-cell accuracy (600: 99.5% at width 32, slower)
    batch_size: int = 64  # fresh scenes every step, so nothing to overfit; smaller batches just add steps
    lr: float = 3e-3  # peak of a one-cycle schedule; BatchNorm keeps it stable
    width: int = 16  # channels of the first convs: 2.7x faster a step than 32 and as accurate at this step count
    feature_dim: int = 128  # FID feature width: sqrtm on 128 x 128 is instant, enough for 9 cells x 19 classes
    seed: int = 0
    resolutions: tuple[int, ...] = (24, 32, 48)  # rendered sizes seen in training: the repo's tokenizer presets and up
    max_blur: float = 1.0  # px; decoded images are softer than renders
    max_noise: float = 6.0  # uint8 levels of Gaussian noise: generated images are not flat

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def cache_name(self) -> str:
        """Directory name: version + a hash of every field, so a changed config never reads a stale cache."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        return f"shapes-classifier-v{self.VERSION}-{digest}"


@dataclass
class ClassifierOutput:
    features: torch.Tensor  # (B, F) the FID feature
    logits: torch.Tensor  # (B, 9, 19) per cell: empty or colour x shape


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShapesClassifier(nn.Module):
    """What is in each of the 9 cells, from a uint8 image of any resolution."""

    SIZE = 32  # inputs are resized to this

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.convs = nn.Sequential(
            _conv(3, w), _conv(w, w), nn.MaxPool2d(2),  # 16x16
            _conv(w, 2 * w), nn.MaxPool2d(2),  # 8x8
            _conv(2 * w, 2 * w), nn.MaxPool2d(2),  # 4x4: kept, not pooled away, so features know where things are
        )
        self.feature = nn.Linear(2 * w * 16, cfg.feature_dim)
        self.heads = nn.Linear(cfg.feature_dim, CELLS * NUM_CLASSES)  # the 9 per-cell heads as one matrix
        # set after training so the features' RMS on clean renders is 1: FID and KID then have a scale that
        # survives retraining, and KID's cubic kernel (x.y / D + 1)^3 sees unit-scale inputs as with Inception
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, images: torch.Tensor) -> ClassifierOutput:
        x = rearrange(images, "b h w c -> b c h w").float() / 255  # (B, 3, R, R) in [0, 1]
        if x.shape[-1] != self.SIZE:
            x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", antialias=True, align_corners=False)
        x = rearrange(self.convs(x), "b c h w -> b (c h w)")  # (B, 2w * 16)
        feats = self.feature(x)  # (B, F) pre-activation: no dead (all-zero) dimensions in the covariance
        logits = rearrange(self.heads(F.relu(feats)), "b (cell k) -> b cell k", cell=CELLS)  # (B, 9, 19)
        return ClassifierOutput(feats * self.feature_scale, logits)


def scene_targets(scenes: list[shapes.Scene]) -> torch.Tensor:
    """Class per cell, (N, 9) int64: 0 empty, else 1 + colour index * 3 + shape index."""
    colours, kinds = list(shapes.COLOURS), list(shapes.SHAPES)
    t = torch.zeros(len(scenes), CELLS, dtype=torch.long)
    for i, s in enumerate(scenes):
        for o in s.objects:
            t[i, o.row * shapes.GRID + o.col] = 1 + colours.index(o.colour) * len(kinds) + kinds.index(o.shape)
    return t


def _augment(images: np.ndarray, rng: np.random.Generator, cfg: ClassifierConfig) -> torch.Tensor:
    """Per-image Gaussian blur (sigma 0..max_blur px) and noise, back to uint8 (B, R, R, 3)."""
    x = rearrange(torch.from_numpy(images).float(), "b h w c -> b c h w")  # (B, 3, R, R)
    b = len(x)
    # A separable blur as one grouped conv: scipy's gaussian_filter would take a Python loop per image.
    sigma = torch.from_numpy(rng.uniform(0, cfg.max_blur, b)).float().clamp_min(1e-3)  # ~0: a delta kernel
    r = max(1, math.ceil(3 * cfg.max_blur))  # taps to 3 sigma of the largest blur
    t = torch.arange(-r, r + 1).float()
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))  # (B, 2r + 1)
    k = repeat(k / k.sum(1, keepdim=True), "b t -> (b c) t", c=3)  # (3B, 2r + 1), one kernel per channel
    x = rearrange(x, "b c h w -> 1 (b c) h w")
    x = F.conv2d(x, k[:, None, None, :], padding=(0, r), groups=3 * b)  # along w
    x = F.conv2d(x, k[:, None, :, None], padding=(r, 0), groups=3 * b)  # along h
    x = rearrange(x, "1 (b c) h w -> b h w c", b=b)
    std = rng.uniform(0, cfg.max_noise, (b, 1, 1, 1)).astype(np.float32)  # per image
    noise = torch.from_numpy(rng.standard_normal(x.shape, np.float32) * std)
    return (x + noise).round().clamp(0, 255).to(torch.uint8)


def train_shapes_classifier(cfg: ClassifierConfig = ClassifierConfig(), progress: bool = True) -> ShapesClassifier:
    """Train on freshly rendered random scenes at random resolutions, blurred and noisy; seeded."""
    rng = np.random.default_rng(cfg.seed)  # scenes, resolutions and augmentation
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's torch RNG
        torch.manual_seed(cfg.seed)
        model = ShapesClassifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    model.train()
    for _ in tqdm(range(cfg.steps), desc="shapes classifier", disable=not progress, leave=False):
        scenes = shapes.sample_scenes(cfg.batch_size, seed=int(rng.integers(2**63)), split="all")
        images = _augment(shapes.render_batch(scenes, int(rng.choice(cfg.resolutions))), rng, cfg)
        logits = model(images).logits  # (B, 9, 19)
        loss = F.cross_entropy(rearrange(logits, "b cell k -> (b cell) k"), scene_targets(scenes).flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        scenes = shapes.sample_scenes(1000, seed=int(rng.integers(2**63)), split="all")
        feats = model(torch.from_numpy(shapes.render_batch(scenes, 32))).features  # (1000, F), scale still 1
        model.feature_scale.fill_(float(feats.pow(2).mean().sqrt().reciprocal()))
    return model


@torch.no_grad()
def evaluate_classifier(model: ShapesClassifier, n: int = 1000, seed: int = 987_654) -> dict:
    """Per-cell and whole-scene accuracy on fresh clean renders at each training resolution."""
    model.eval()
    scenes = shapes.sample_scenes(n, seed=seed, split="all")  # fixed, so runs and configs compare
    targets = scene_targets(scenes)  # (N, 9)
    by_res = {}
    for res in model.cfg.resolutions:
        pred = model(torch.from_numpy(shapes.render_batch(scenes, res))).logits.argmax(-1)  # (N, 9)
        by_res[res] = ((pred == targets).double().mean().item(), (pred == targets).all(1).double().mean().item())
    return {"cell_accuracy": float(np.mean([c for c, _ in by_res.values()])),
            "scene_accuracy": float(np.mean([s for _, s in by_res.values()])),
            "cell_accuracy_by_resolution": {str(r): c for r, (c, _) in by_res.items()}, "eval_scenes": n}


def save_classifier(model: ShapesClassifier, cfg: ClassifierConfig, directory: str | Path, metrics: dict | None = None
                    ) -> Path:
    """config.json (format, version, config, metrics) + model.safetensors, written to a temp dir and renamed in."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = directory.with_name(f".{directory.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        meta = {"format": FORMAT, "version": cfg.VERSION, "config": cfg.to_dict(), "metrics": metrics or {}}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        save_model(model, str(tmp / WEIGHTS_NAME))
        if directory.exists():  # another process cached it first, or a retrain: swap, never half-write
            old = directory.with_name(f".{directory.name}.old-{tag}")
            os.replace(directory, old)
            try:
                os.replace(tmp, directory)
            except BaseException:
                os.replace(old, directory)  # put the old one back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def load_classifier(directory: str | Path) -> ShapesClassifier:
    """A classifier saved by save_classifier, in eval mode; FeaturesError naming the file on any problem."""
    directory = Path(directory)
    path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not path.is_file():
        raise FeaturesError(f"'{directory}' is not a shapes-classifier directory: {path} is missing")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FeaturesError(f"cannot read '{path}' as JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FeaturesError(f"'{path}' is not a shapes-classifier config (expected format {FORMAT!r})")
    if meta.get("version") != ClassifierConfig.VERSION:
        raise FeaturesError(f"'{path}' is classifier version {meta.get('version')!r}; this code reads "
                            f"version {ClassifierConfig.VERSION}: delete the directory to retrain")
    try:
        model = ShapesClassifier(ClassifierConfig.from_dict(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise FeaturesError(f"'{path}' has an invalid \"config\": {e}") from e
    if not weights.is_file():
        raise FeaturesError(f"'{directory}' is incomplete: {weights} is missing")
    try:
        load_model(model, str(weights), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise FeaturesError(f"cannot load '{weights}': {e}") from e
    return model.eval()


def default_cache_dir() -> Path:
    return Path(os.environ.get("TESSERA_CACHE") or "~/.cache/tessera").expanduser()


def _torch_features(model: nn.Module, name: str) -> Features:
    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(np.ascontiguousarray(images))).features.double().numpy()  # (N, F)

    return Features(name, fn)


def classifier_features(cache_dir: str | Path | None = None, cfg: ClassifierConfig | None = None,
                        progress: bool = True) -> Features:
    """The shapes classifier's features, loaded from cache_dir/<version-hash> or trained once and cached there."""
    cfg = cfg or ClassifierConfig()
    directory = Path(cache_dir or default_cache_dir()) / cfg.cache_name()
    if not directory.exists():
        log.info("training the shapes-world feature classifier (%d steps, once) into %s", cfg.steps, directory)
        start = time.perf_counter()
        model = train_shapes_classifier(cfg, progress)
        metrics = {"train_seconds": round(time.perf_counter() - start, 1), **evaluate_classifier(model)}
        log.info("shapes classifier: %.1f s, per-cell accuracy %.4f", metrics["train_seconds"],
                 metrics["cell_accuracy"])
        save_classifier(model, cfg, directory, metrics)
    return _torch_features(load_classifier(directory), cfg.cache_name())


# ---------------------------------------------------------------- Inception-v3 from a local file


def _plain_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, loaded without running any pickled code; refuses anything but a flat state dict."""
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise FeaturesError(f"cannot read '{path}' as safetensors: {e}") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # refuses pickled classes and code
    except Exception as e:  # UnpicklingError, RuntimeError (not a torch file), ...: all mean "not plain tensors"
        raise FeaturesError(f"refusing '{path}': only plain state dicts of tensors are accepted (or .safetensors); "
                            f"torch.load(weights_only=True) failed: {e}") from e
    if not (isinstance(state, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise FeaturesError(f"refusing '{path}': expected a flat state dict {{name: tensor}}, got {type(state).__name__}")
    return state


def inception_features(weights_path: str | Path) -> Features:
    """Inception-v3 2048-d pool features (the FID standard) from a local, plain weights file."""
    state = _plain_state_dict(Path(weights_path))
    try:
        import torch_fidelity  # noqa: F401  (torchmetrics' Inception is torch-fidelity's)
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as e:
        raise FeaturesUnavailableError(
            "'inception:' features need torch-fidelity: `pip install torch-fidelity torchvision` (torchvision may pull "
            "a large CUDA torch); the default 'classifier' features work offline without it") from e
    with tempfile.TemporaryDirectory() as tmp:
        # torch-fidelity unpickles the file with a bare torch.load (weights_only=False in some versions), which can
        # run code: it gets a copy we wrote from the tensors checked above, never the user's file itself.
        copy = Path(tmp) / "inception.pth"
        torch.save(state, copy)
        # antialias=False: torch-fidelity's TF1-compatible resize to 299, so values compare with published FIDs
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=str(copy), antialias=False)

    @torch.no_grad()
    def fn(images: np.ndarray) -> np.ndarray:
        x = rearrange(torch.from_numpy(np.ascontiguousarray(images)), "b h w c -> b c h w")  # uint8; resized inside
        return net(x).double().numpy()  # (N, 2048)

    return Features("inception-v3-2048", fn)


# ---------------------------------------------------------------- one resolver


def resolve_features(spec: str | FeatureFn | Features = "classifier", cache_dir: str | Path | None = None,
                     progress: bool = True) -> Features:
    """'classifier', 'inception:PATH', a Features, or any callable uint8 (N, R, R, 3) -> (N, D)."""
    if isinstance(spec, Features):
        return spec
    if callable(spec):
        return Features(getattr(spec, "__name__", "custom"), spec)
    if spec == "classifier":
        return classifier_features(cache_dir, progress=progress)
    if isinstance(spec, str) and spec.startswith("inception:") and spec != "inception:":
        return inception_features(spec.removeprefix("inception:"))
    raise FeaturesError(f"unknown features {spec!r}: use 'classifier' (default, offline), 'inception:PATH' (a local "
                        "Inception-v3 state dict, .pth or .safetensors) or a callable uint8 (N, R, R, 3) -> (N, D)")


__all__ = ["KID", "ClassifierConfig", "ClassifierOutput", "Features", "FeaturesError", "FeaturesUnavailableError",
           "PrecisionRecall", "QualityReport", "ShapesClassifier", "classifier_features", "default_cache_dir",
           "evaluate_classifier", "extract_features", "frechet_distance", "inception_features", "kid",
           "load_classifier", "precision_recall", "quality_metrics", "report_from_features", "resolve_features",
           "save_classifier", "scene_targets", "train_shapes_classifier"]
