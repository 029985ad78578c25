"""Pre-tokenizing: encode a (image, text) dataset once into codes + text ids, saved as Arrow.

The generator never sees pixels: every image is encoded by the VQ tokenizer
once, here, and the codes are stored with the caption's text ids in a
`datasets` Arrow directory (`map` + `save_to_disk`):

    <out>/                 datasets.save_to_disk: columns codes (h*w int16), text_ids (text_len int32)
    <out>/tessera_codes.json   the manifest: which tokenizer made the codes, the layout, counts

The manifest names the tokenizer by the sha256 of its weights file, so training
can refuse codes made by another tokenizer (`check_manifest`). Rows whose
caption is empty, or whose image cannot be read, are skipped, counted and
logged by row index; nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ar_model import SequenceLayout, encode_text
from train.data.images import ImageError, to_rgb
from train.loop import TrainConfigError
from vqtok import VQTokenizer, images_to_tensor

log = logging.getLogger(__name__)

MANIFEST = "tessera_codes.json"
FORMAT = "tessera.codes"
VERSION = 1


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 of the tokenizer's weights file: the identity of the codes it makes."""
    from vqtok.io import WEIGHTS_NAME

    h = hashlib.sha256()
    with open(Path(tokenizer_dir) / WEIGHTS_NAME, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class CodesManifest:
    format: str
    version: int
    tokenizer_sha256: str  # tokenizer_fingerprint of the tokenizer that made the codes
    tokenizer_dir: str  # where it was at the time (informational)
    layout: dict  # SequenceLayout.to_dict()
    rows: int  # rows written
    skipped_empty_text: int
    skipped_bad_image: int
    truncated_text: int  # captions longer than text_len, cut


def _encode_batch(
    batch: dict[str, list], indices: list[int], *, tokenizer: VQTokenizer, text_tokenizer: Any,
    layout: SequenceLayout, resolution: int, counts: dict[str, int],
) -> dict[str, list]:
    images, texts = [], []
    for i, img, text in zip(indices, batch["image"], batch["text"]):
        if not isinstance(text, str) or not text.strip():
            counts["skipped_empty_text"] += 1
            log.warning("pre-tokenize: row %d skipped: empty caption", i)
            continue
        try:
            images.append(to_rgb(img, resolution, f"row {i}"))
        except (ImageError, OSError, ValueError) as e:
            counts["skipped_bad_image"] += 1
            log.warning("pre-tokenize: row %d skipped: %s", i, e)
            continue
        texts.append(text)
    if not images:
        return {"codes": [], "text_ids": []}
    device = next(tokenizer.parameters()).device
    with torch.inference_mode():
        codes = tokenizer.encode(images_to_tensor(np.stack(images)).to(device)).codes  # (B, h, w)
    text = encode_text(text_tokenizer, texts, layout)
    counts["truncated_text"] += sum(text.truncated)
    return {
        "codes": codes.flatten(1).to(torch.int16).cpu().numpy(),  # (B, h*w); K <= 32768 checked by the caller
        "text_ids": text.ids.to(torch.int32).numpy(),  # (B, text_len)
    }


def pretokenize(
    ds: Any,
    tokenizer: VQTokenizer,
    tokenizer_dir: str | Path,
    text_tokenizer: Any,
    layout: SequenceLayout,
    out_dir: str | Path,
    batch_size: int = 256,
    progress: bool = True,
) -> CodesManifest:
    """Encode `ds` (columns image, text) into `out_dir`; written to a temporary name, then renamed."""
    import datasets

    if layout.codebook_size > np.iinfo(np.int16).max + 1:
        raise TrainConfigError(f"codebook of {layout.codebook_size} codes does not fit the int16 code column")
    for col in ("image", "text"):
        if col not in ds.column_names:
            raise TrainConfigError(f"the dataset has no {col!r} column (columns: {', '.join(ds.column_names)})")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.eval()
    counts = {"skipped_empty_text": 0, "skipped_bad_image": 0, "truncated_text": 0}
    features = datasets.Features({
        "codes": datasets.Sequence(datasets.Value("int16"), length=layout.num_image_tokens),
        "text_ids": datasets.Sequence(datasets.Value("int32"), length=layout.text_len),
    })
    if not progress:
        datasets.disable_progress_bars()
    try:
        coded = ds.map(
            _encode_batch,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            remove_columns=ds.column_names,
            features=features,
            load_from_cache_file=False,  # counts are gathered as the rows pass; a cache hit would skip them
            fn_kwargs=dict(tokenizer=tokenizer, text_tokenizer=text_tokenizer, layout=layout,
                           resolution=tokenizer.cfg.resolution, counts=counts),
            desc="pre-tokenizing",
        )
        if len(coded) == 0:
            raise TrainConfigError(f"pre-tokenizing left no rows ({counts}); see the log for the skipped rows")
        coded.save_to_disk(str(tmp))
    finally:
        if not progress:
            datasets.enable_progress_bars()
    manifest = CodesManifest(
        format=FORMAT, version=VERSION, tokenizer_sha256=tokenizer_fingerprint(tokenizer_dir),
        tokenizer_dir=str(tokenizer_dir), layout=layout.to_dict(), rows=len(coded), **counts,
    )
    (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    skipped = counts["skipped_empty_text"] + counts["skipped_bad_image"]
    if skipped or counts["truncated_text"]:
        log.warning("pre-tokenize: %d rows written, %d skipped (%s), %d captions truncated to %d tokens",
                    len(coded), skipped, counts, counts["truncated_text"], layout.text_len)
    return manifest


def read_manifest(codes_dir: str | Path) -> CodesManifest:
    path = Path(codes_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{codes_dir} holds no pre-tokenized codes ({MANIFEST} is missing)")
    try:
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"version {d.get('version')!r}; this Tessera reads version {VERSION}")
        return CodesManifest(**d)
    except (ValueError, TypeError) as e:
        raise TrainConfigError(f"{path}: not a Tessera codes manifest ({e})") from e


def check_manifest(manifest: CodesManifest, tokenizer_dir: str | Path, layout: SequenceLayout) -> None:
    """Refuse codes made by another tokenizer or for another layout."""
    sha = tokenizer_fingerprint(tokenizer_dir)
    if manifest.tokenizer_sha256 != sha:
        raise TrainConfigError(
            f"the pre-tokenized codes were made by another tokenizer (sha256 {manifest.tokenizer_sha256[:12]}, "
            f"from {manifest.tokenizer_dir}) than {tokenizer_dir} (sha256 {sha[:12]}); pre-tokenize again"
        )
    # row tokens are added when sequences are built, not stored with the codes: they may differ
    stored = {k: v for k, v in manifest.layout.items() if k != "row_tokens"}
    if stored != {k: v for k, v in layout.to_dict().items() if k != "row_tokens"}:
        raise TrainConfigError(
            f"the pre-tokenized codes use layout {manifest.layout}, the generator {layout.to_dict()}; pre-tokenize again"
        )


def load_codes(codes_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole Arrow dataset as tensors: codes (N, h*w) int16 and text ids (N, text_len) int32."""
    import datasets

    ds = datasets.load_from_disk(str(codes_dir))

    def column(name: str) -> torch.Tensor:  # Arrow fixed-size lists -> one 2-D array, keeping the stored dtype
        col = ds.data.column(name).combine_chunks()  # FixedSizeListArray
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return torch.from_numpy(flat.reshape(len(col), col.type.list_size).copy())

    return column("codes"), column("text_ids")


__all__ = [
    "CodesManifest",
    "check_manifest",
    "load_codes",
    "pretokenize",
    "read_manifest",
    "tokenizer_fingerprint",
]
