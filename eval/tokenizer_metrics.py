"""How well a tokenizer keeps the image: scene preservation, PSNR, SSIM, rFID, codebook use, speed.

Scene preservation is the exact measure the shapes world allows: the share of
images whose reconstruction parses to the same scene as the original
(`parse(decode(encode(x))) == parse(x)`). SSIM is torchmetrics' (Gaussian 11x11
window, sigma 1.5, on [0, 1] pixels); reconstruction FID is the Fréchet distance
between features of the originals and of their reconstructions (`eval.fid`), when
a feature source is given.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from train.data import shapes
from vqtok import VQTokenizer, images_to_tensor, tensor_to_images


@dataclass
class TokenizerReport:
    images: int  # how many images were measured
    scene_preservation: float  # share with parse(recon) == parse(original)
    psnr: float  # dB, mean over images, on uint8 pixels
    ssim: float  # mean over images, on [0, 1] pixels
    codebook_usage: float  # share of the codebook used at least once over these images
    perplexity: float  # exp(entropy) of the code histogram
    encode_images_per_s: float
    decode_images_per_s: float
    batch_size: int
    device: str
    failures: list[int] = field(default_factory=list)  # indices (first 20) whose scene changed
    rfid: dict | None = None  # eval.fid.QualityReport of originals vs reconstructions, when features were given
    chars: int = 0  # characters written in the originals (scenes with text)
    # share of them read back as the same character in the same cell of the reconstruction; None without text
    glyph_preservation: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # time the kernels, not their launch


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer: VQTokenizer, images: torch.Tensor, batch_size: int = 100, progress: bool = True, features=None,
    grid: int = shapes.GRID,
) -> TokenizerReport:
    """Measure `tokenizer` on uint8 images (N, H, W, 3) of a grid x grid world; `features`
    (eval.fid.resolve_features' result) adds rFID."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    counts = torch.zeros(tokenizer.cfg.num_codes, dtype=torch.long)
    kept, psnrs, ssims, failures, recons = 0, [], [], [], []
    chars = chars_kept = 0
    t_enc = t_dec = 0.0
    for start in tqdm(range(0, len(images), batch_size), desc="tokenizer eval", disable=not progress, leave=False):
        x8 = images[start : start + batch_size]  # (B, H, W, 3) uint8
        x = images_to_tensor(x8).to(device)
        t = time.perf_counter()
        codes = tokenizer.encode(x).codes  # (B, h, w)
        _sync(device)
        t_enc += time.perf_counter() - t
        t = time.perf_counter()
        recon = tokenizer.decode(codes)  # (B, 3, H, W) in [-1, 1]
        _sync(device)
        t_dec += time.perf_counter() - t
        recon8 = tensor_to_images(recon).cpu()  # (B, H, W, 3) uint8
        counts += torch.bincount(codes.flatten().cpu(), minlength=len(counts))
        mse = (recon8.float() - x8.float()).pow(2).mean(dim=(1, 2, 3))
        psnrs.append(10 * torch.log10(255.0**2 / mse.clamp_min(1e-10)))
        to01 = lambda im: im.permute(0, 3, 1, 2).float() / 255  # noqa: E731  (B, 3, H, W)
        ssims.append(ssim(to01(recon8), to01(x8.cpu()), data_range=1.0, reduction="none"))  # (B,)
        if features is not None:
            recons.append(recon8)
        for i in range(len(x8)):
            before, after = shapes.parse(x8[i].numpy(), grid), shapes.parse(recon8[i].numpy(), grid)
            if before == after:
                kept += 1
            elif len(failures) < 20:
                failures.append(start + i)
            read = _chars_by_cell(after)
            for cell, ch in _chars_by_cell(before).items():
                chars += 1
                chars_kept += read.get(cell) == ch
    p = counts.float() / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    n = len(images)
    rfid = None
    if features is not None:
        from eval.fid import quality_metrics

        rfid = quality_metrics(images.numpy(), torch.cat(recons).numpy(), features).to_dict()
    return TokenizerReport(
        images=n,
        scene_preservation=kept / n,
        psnr=float(torch.cat(psnrs).mean()),
        ssim=float(torch.cat(ssims).mean()),
        codebook_usage=float((counts > 0).float().mean()),
        perplexity=float(entropy.exp()),
        encode_images_per_s=n / t_enc,
        decode_images_per_s=n / t_dec,
        batch_size=batch_size,
        device=machine_description(device),
        failures=failures,
        rfid=rfid,
        chars=chars,
        glyph_preservation=chars_kept / chars if chars else None,
    )


def _chars_by_cell(scene: shapes.Scene) -> dict[tuple[int, int], str]:
    return {cell: ch for t in scene.texts for cell, ch in zip(t.cells(), t.string)}


def heldout_images(n: int, resolution: int, seed: int = 1234, grid: int = shapes.GRID,
                   tones: bool = False, text: float = 0.0, max_objects: int | None = None) -> torch.Tensor:
    """`n` held-out images of the grid x grid world (compositions training never sees) as uint8 (N, H, W, 3);
    with `tones` (a tokenizer for editing) objects bright or dim; with `text` that share of scenes holds a
    string (any string, held-out ones among them); scenes of 1..max_objects objects (a tokenizer's own
    data.max_objects: the world it was trained on)."""
    if max_objects is None:  # up to 3 objects at 3x3 (the scenes every earlier figure used), up to 16 at 4x4
        max_objects = shapes.MAX_OBJECTS if grid == shapes.GRID else grid * grid
    scenes = shapes.sample_scenes(n, seed=seed, split="heldout", max_objects=max_objects, grid=grid, tones=tones,
                                  text=text)
    return torch.from_numpy(shapes.render_batch(scenes, resolution))
