"""The tokenizer on photographs: trained on random crops of six photos, measured on two whole photos it never saw.

    python benchmarks/photo_tokenizer.py --run runs/photo [--preset cpu-photo] [--set vq.quantizer=fsq ...]
                                         [--steps N | --minutes M] [--crops 4000] [--photos six|more]
                                         [--colour-augment] [--search-candidates 8] [--search-rounds 2]
                                         [--out photo.json]

The photographs are the ones bundled inside the scikit-image wheel (a dev dependency; nothing is
downloaded): `--crops` random crops of `vq.resolution` px from rocket, hubble_deep_field,
immunohistochemistry, retina, coffee and the left stereo_motorcycle image (uniform over the photos,
then over positions; seed 0; `--photos more` adds six grey natural photographs of the wheel: camera,
brick, grass, gravel, coins, moon, as RGB) are written to RUN/crops/ as an image folder and the tokenizer stage
trains on them (`data.source`); astronaut and chelsea (cropped to a multiple of the downsampling) are
held out. Each held-out photo is encoded and decoded whole (the nets are convolutional: no tiles, no
seams), encoded tile by tile and its code grid decoded in overlapping training-sized windows blended
together (decode_windows: encoder and decoder see crop-sized GroupNorm statistics, and no edge shows), and
tile by tile at the training resolution (seams where tiles meet), and encoded whole with its codes checked
against the decoder (vqtok.search.search_codes: `--search-candidates` codes tried at each position over
`--search-rounds` passes; the same codes and bits per pixel, chosen by what the decoder draws), and compared with
classical codecs at the same bits per pixel (log2(codes) per code over downsample^2 pixels):

- JPEG (Pillow) at the highest quality whose file is no larger than that budget;
- bicubic: down-sampled to the code grid's size and back up.

Reported per photo: PSNR (dB), SSIM (torchmetrics), the mean colour error (CIE76 delta E in Lab,
scikit-image), for the tokenizer the seam step (seam_step: how much larger pixel steps are across the lines
where tiles meet than elsewhere), and the codebook usage of the two photos (distinct codes over the codebook
size). And the fit: PSNR on (up to) 800 of the training crops against 800 fresh crops of the same photos (seed
1000, the same augmentation, RUN/fresh_crops): a gap between them is crops memorised, not photos learned.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TRAIN_PHOTOS = ("rocket", "hubble_deep_field", "immunohistochemistry", "retina", "coffee", "stereo_motorcycle")
# grey photographs of textures and scenes (the wheel holds no more colour photos but the two held out)
GREY_PHOTOS = ("camera", "brick", "grass", "gravel", "coins", "moon")
PHOTO_SETS = {"six": TRAIN_PHOTOS, "more": TRAIN_PHOTOS + GREY_PHOTOS}
HELD_OUT = ("astronaut", "chelsea")
FIT_CROPS = 800  # training crops and fresh ones measured for the fit (crop_psnr)
FRESH_SEED = 1000  # the fresh crops' seed (the training crops use 0)


def photo(name: str):
    """A bundled scikit-image photograph as uint8 (H, W, 3) (a grey one repeated over the channels)."""
    import numpy as np
    import skimage.data

    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def write_crops(folder: Path, n: int, size: int, seed: int = 0, colours: bool = False,
                names: tuple[str, ...] = TRAIN_PHOTOS) -> Path:
    """`n` random size x size crops of the training photos as PNGs in `folder` (an image folder). With `colours`,
    each crop's RGB channels are put in a random order (one of six, the identity included) and it may be mirrored:
    the six training photos hold few greens, and a tokenizer that never saw one shifts it (the cat's eyes)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [photo(p) for p in names]
    orders = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    augment = np.random.default_rng(seed + 1)  # its own stream: the crops' places do not depend on `colours`
    for i in range(n):
        img = photos[rng.integers(len(photos))]
        y, x = rng.integers(img.shape[0] - size + 1), rng.integers(img.shape[1] - size + 1)
        crop = img[y : y + size, x : x + size]
        if colours:
            crop = crop[..., list(orders[augment.integers(6)])]
            crop = crop[:, ::-1] if augment.integers(2) else crop
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"crop_{i:05d}.png")
    return folder


def metrics(original, decoded) -> dict:
    """PSNR (dB), SSIM and the mean CIE76 colour error of uint8 (H, W, 3) images."""
    import numpy as np
    import torch
    from skimage.color import rgb2lab
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a, b = original.astype(np.float64), decoded.astype(np.float64)
    mse = ((a - b) ** 2).mean()
    psnr = 10 * math.log10(255.0**2 / max(mse, 1e-10))
    t = lambda x: torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].double() / 255  # noqa: E731 (a copy: writable)
    s = float(ssim(t(decoded), t(original), data_range=1.0))
    delta_e = float(np.sqrt(((rgb2lab(original) - rgb2lab(decoded)) ** 2).sum(-1)).mean())
    return {"psnr": psnr, "ssim": s, "delta_e": delta_e}


def seam_step(original, decoded, size: int) -> float:
    """How much larger the step between neighbouring pixels is across the lines where `size` px tiles meet than
    elsewhere (mean absolute difference of uint8 (H, W, 3) neighbours, 0-255, the original's own steps
    subtracted; columns and rows): ~0 or below without seams, positive where tiles show."""
    import numpy as np

    excess = []
    for axis in (0, 1):
        step = lambda x: np.abs(np.diff(x.astype(np.float64), axis=axis)).mean(axis=(1 - axis, 2))  # noqa: E731
        d = step(decoded) - step(original)  # (n - 1,) per line between pixel i and i + 1
        at = (np.arange(len(d)) % size) == size - 1
        excess.append(d[at].mean() - d[~at].mean())
    return float(np.mean(excess))


def jpeg_at(image, bpp: float):
    """The image through JPEG at the highest quality whose size is within `bpp` bits per pixel, and that bpp."""
    import numpy as np
    from PIL import Image

    best = None
    for quality in range(1, 96):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        bits = 8 * buf.tell() / (image.shape[0] * image.shape[1])
        if bits > bpp:
            break
        best = (np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), bits, quality)
    return best  # None when even quality 1 is over budget


def bicubic_at(image, factor: int):
    """Down-sampled by `factor` (to the code grid's size) and back up, bicubic."""
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((w // factor, h // factor), Image.BICUBIC)
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def decode_windows(tokenizer, codes, window: int):
    """Decode a (1, h, w) code grid in overlapping windows of `window` x `window` codes (stride window / 2), each
    blended in with weights that fall linearly to its edges: every pixel is drawn by decoders that saw a
    training-sized grid (GroupNorm's statistics over a whole photograph are not those of a training crop) and no
    window edge shows (diffusers' tiled VAE decode blends overlapping tiles the same way; written here because
    this tokenizer is not a diffusers model). A grid no larger than a window is decoded in one pass."""
    import torch

    _, h, w = codes.shape
    if h <= window and w <= window:
        return tokenizer.decode(codes)
    ds, stride = tokenizer.cfg.downsample, max(1, window // 2)

    def starts(n):  # window starts covering 0..n, the last one flush with the edge
        return sorted({min(i, max(0, n - window)) for i in range(0, max(1, n - window + stride), stride)})

    side = lambda n: torch.minimum(torch.arange(n) + 0.5, n - torch.arange(n) - 0.5)  # noqa: E731 (ramp to edges)
    out = weight = None
    for y in starts(h):
        for x in starts(w):
            part = tokenizer.decode(codes[:, y : y + window, x : x + window])  # (1, 3, <=window*ds, <=window*ds)
            ph, pw = part.shape[-2:]
            ramp = side(ph)[:, None] * side(pw)[None, :]  # (ph, pw), largest in the window's middle
            if out is None:
                out = part.new_zeros(1, 3, h * ds, w * ds)
                weight = part.new_zeros(h * ds, w * ds)
            out[..., y * ds : y * ds + ph, x * ds : x * ds + pw] += part * ramp
            weight[y * ds : y * ds + ph, x * ds : x * ds + pw] += ramp
    return out / weight


def reconstruct(tokenizer, image, tile: int | None = None, windows: bool = False,
                search: tuple[int, int] | None = None):
    """Encode and decode uint8 (H, W, 3) whole; with `windows`, encoded tile by tile and the code grid decoded
    whole in blended training-sized windows (decode_windows: no seams); or tile by tile (encoded and decoded);
    with `search` (candidates, rounds), whole with the codes searched against the decoder (vqtok.search);
    returns (uint8 image, codes used). `image`'s sides are multiples of the resolution for `tile` / `windows`."""
    import numpy as np
    import torch

    from vqtok import images_to_tensor, tensor_to_images
    from vqtok.search import search_codes

    def encode(x):
        x = images_to_tensor(torch.from_numpy(np.ascontiguousarray(x))[None])
        return search_codes(tokenizer, x, *search) if search else tokenizer.encode(x).codes

    def run(x):
        with torch.inference_mode():
            codes = encode(x)
            return tensor_to_images(tokenizer.decode(codes))[0].numpy(), codes.flatten().tolist()

    if windows:  # codes tile by tile (each from its own training-sized tile), decoded as one blended grid
        size, ds = tokenizer.cfg.resolution, tokenizer.cfg.downsample
        codes = torch.zeros(1, image.shape[0] // ds, image.shape[1] // ds, dtype=torch.long)
        with torch.inference_mode():
            for y in range(0, image.shape[0] - size + 1, size):
                for x in range(0, image.shape[1] - size + 1, size):
                    codes[:, y // ds : (y + size) // ds, x // ds : (x + size) // ds] = encode(
                        image[y : y + size, x : x + size])
            decoded = decode_windows(tokenizer, codes, tokenizer.cfg.grid_size)
        return tensor_to_images(decoded)[0].numpy(), codes.flatten().tolist()
    if tile is None:
        return run(image)
    out, used = np.zeros_like(image), []
    for y in range(0, image.shape[0] - tile + 1, tile):
        for x in range(0, image.shape[1] - tile + 1, tile):
            out[y : y + tile, x : x + tile], c = run(image[y : y + tile, x : x + tile])
            used += c
    return out, used


def crop_psnr(tokenizer, folder: Path, n: int) -> float:
    """PSNR (dB, from the mean squared error over all pixels, uint8 scale) of the tokenizer on the first `n` crops
    (PNGs) in `folder`, each encoded and decoded alone. Beside the training crops and fresh crops of the same
    photographs, it shows how much of the training fit is memorised crops rather than the photos' statistics."""
    import numpy as np
    import torch
    from PIL import Image

    from vqtok import images_to_tensor, tensor_to_images

    files = sorted(folder.glob("*.png"))[:n]
    if not files:
        raise FileNotFoundError(f"no PNG crops in {folder}")
    sq, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(files), 100):
            batch = np.stack([np.array(Image.open(f).convert("RGB")) for f in files[i : i + 100]])  # (B, H, W, 3)
            out = tensor_to_images(tokenizer(images_to_tensor(torch.from_numpy(batch))).recon).numpy()
            sq += float(((out.astype(np.float64) - batch) ** 2).sum())
            count += batch.size
    return 10 * math.log10(255.0**2 / max(sq / count, 1e-10))


def main(argv: list[str] | None = None) -> int:
    from pipelines import Run
    from train.config import parse_assignments
    from train.tokenizer_stage import preset_config, train_tokenizer
    from vqtok import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run directory (RUN/crops, RUN/tokenizer; a trained one is reused)")
    p.add_argument("--preset", default="cpu-photo",
                   help="the tokenizer stage preset to start from (cpu-photo: 64 px, 16x16 codes of 1,024)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="stage overrides")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    budget.add_argument("--minutes", type=float,
                        help="as many steps as fit in this many minutes of training on this machine (a few timed "
                             "steps first, train.loop.steps_for_seconds; loading and checkpoints come on top)")
    p.add_argument("--crops", type=int, default=4000)
    p.add_argument("--photos", choices=sorted(PHOTO_SETS), default="six",
                   help="training photographs: the six colour ones, or those and six grey ones (module docstring)")
    p.add_argument("--colour-augment", action="store_true",
                   help="crops with their RGB channels in a random order and randomly mirrored (write_crops)")
    p.add_argument("--search-candidates", type=int, default=8,
                   help="codes tried at each position by the decoder-checked encode (vqtok.search); 0: not measured")
    p.add_argument("--search-rounds", type=int, default=2, help="passes of the decoder-checked encode")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)

    run = Path(args.run)
    sets = parse_assignments(args.set)
    cfg = preset_config(args.preset).override({**sets, **({"loop.steps": args.steps} if args.steps else {}),
                                               "loop.progress": False})
    size = cfg.vq.resolution
    crops = run / "crops"
    if not crops.is_dir():
        write_crops(crops, args.crops, size, colours=args.colour_augment, names=PHOTO_SETS[args.photos])
    cfg = cfg.override({"data.source": str(crops)})
    t = time.perf_counter()
    # with --minutes, a run begun here resumes with the steps it began with (the schedule depends on them)
    tok_dir = train_tokenizer(cfg, run, seconds=args.minutes * 60 if args.minutes else None)
    seconds = time.perf_counter() - t
    cfg = cfg.override({"loop.steps": Run(run).recorded_config("tokenizer")["loop"]["steps"]})
    tokenizer = load_tokenizer(tok_dir).eval()
    ds, k = tokenizer.cfg.downsample, tokenizer.cfg.num_codes
    bpp = math.log2(k) / ds**2
    rows, used, searched_used, search_seconds = [], set(), set(), 0.0
    for name in HELD_OUT:
        image = photo(name)
        image = image[: image.shape[0] // size * size, : image.shape[1] // size * size]  # whole tiles
        whole, codes = reconstruct(tokenizer, image)
        used.update(codes)
        tiled, _ = reconstruct(tokenizer, image, tile=size)
        blended, _ = reconstruct(tokenizer, image, windows=True)
        jpeg = jpeg_at(image, bpp)
        with_seam = lambda out: {**metrics(image, out), "seam": seam_step(image, out, size)}  # noqa: E731
        row = {"photo": name, "shape": list(image.shape[:2]), "whole": with_seam(whole), "windows": with_seam(blended),
               "tiles": with_seam(tiled), "bicubic": metrics(image, bicubic_at(image, ds))}
        if args.search_candidates > 0:
            t_search = time.perf_counter()
            searched, codes = reconstruct(tokenizer, image, search=(args.search_candidates, args.search_rounds))
            search_seconds += time.perf_counter() - t_search
            searched_used.update(codes)
            row["searched"] = with_seam(searched)
        if jpeg is not None:
            row["jpeg"] = {**metrics(image, jpeg[0]), "bpp": jpeg[1], "quality": jpeg[2]}
        rows.append(row)
    # the fit on training crops against fresh crops of the same photos (another seed, the same augmentation)
    fresh = run / "fresh_crops"
    if not fresh.is_dir():
        write_crops(fresh, min(args.crops, FIT_CROPS), size, seed=FRESH_SEED, colours=args.colour_augment,
                    names=PHOTO_SETS[args.photos])
    fit = {"training_crops": crop_psnr(tokenizer, crops, FIT_CROPS),
           "fresh_crops": crop_psnr(tokenizer, fresh, FIT_CROPS)}
    result = {"preset": args.preset, "sets": sets, "colour_augment": args.colour_augment, "photos_set": args.photos,
              "minutes": args.minutes, "steps": cfg.loop.steps, "train_seconds": round(seconds, 1),
              "bpp": bpp, "codes": k, "codebook_usage": len(used) / k, "crop_fit": fit, "photos": rows,
              "search": {"candidates": args.search_candidates, "rounds": args.search_rounds,
                         "seconds": round(search_seconds, 1), "codebook_usage": len(searched_used) / k}}
    print(f"tokenizer: {args.preset} preset, {sets}, {cfg.loop.steps} steps, {seconds / 60:.1f} min of training "
          f"(this call); {k} codes, {bpp:.3f} bits per pixel; codebook usage on the held-out photos "
          f"{100 * result['codebook_usage']:.1f}%")
    if args.search_candidates > 0:
        print(f"decoder-checked encode: {args.search_candidates} candidates, {args.search_rounds} rounds, "
              f"{search_seconds:.0f} s for the two photos; its codebook usage {100 * len(searched_used) / k:.1f}%")
    print(f"crops, PSNR: {fit['training_crops']:.2f} dB on (up to {FIT_CROPS} of) its training crops, "
          f"{fit['fresh_crops']:.2f} dB on fresh crops of the same photos (the gap is memorised crops)")
    print("| photo | method | PSNR (dB) | SSIM | colour error (dE) | seam step (0-255) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        for method in ("whole", "searched", "windows", "tiles", "jpeg", "bicubic"):
            if method in r:
                m = r[method]
                label = {"whole": "tokenizer, whole image", "searched": "tokenizer, whole image, decoder-checked codes",
                         "tiles": f"tokenizer, {size} px tiles",
                         "windows": f"tokenizer, {size} px tile codes, blended decode",
                         "jpeg": f"JPEG q{m.get('quality')} ({m.get('bpp', 0):.3f} bpp)",
                         "bicubic": f"bicubic x{ds}"}[method]
                seam = f"{m['seam']:+.2f}" if "seam" in m else ""
                print(f"| {r['photo']} | {label} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['delta_e']:.2f} | {seam} |")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
