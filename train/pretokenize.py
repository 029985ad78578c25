"""Pre-tokenizing: encode a (image, text) dataset once into codes + text ids, saved as Arrow.

The generator never sees pixels: every image is encoded by the VQ tokenizer
once, here, and the codes are stored with the caption's text ids in a
`datasets` Arrow directory (`map` + `save_to_disk`):

    <out>/                 datasets.save_to_disk: columns codes (h*w int16), text_ids (text_len int32),
                           and for editing data context (h*w int16: the source image's codes, -1 if none)
    <out>/tessera_codes.json   the manifest: which tokenizer made the codes, the layout, the source, counts

The manifest names the tokenizer by the sha256 of its weights file, so training
can refuse codes made by another tokenizer (`check_manifest`). Rows whose
caption is empty, or whose image cannot be read, are skipped, counted and
logged by row index (and file, when known); nothing is silently dropped.

Editing data (a layout with one context image) carry a third column, source: the
image before the edit, encoded into the context column (an empty source is an
absent image: a text-to-image row among the edits).

Large data sets are encoded in shards, each saved when finished, so a killed
run resumes where it stopped:

    <out>.partial/tessera_partial.json   what the shards are made with (source, layout, tokenizer, sizes)
    <out>.partial/shard-NNNNN/           one finished shard: codes, text_ids, skip (reason or ""), truncated

Workers (`num_proc`) cannot report counts back through shared state, so every
row comes out of `map` with its skip reason; the main process logs, counts and
drops the skipped rows when it joins the shards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from ar_model import ABSENT, SequenceLayout, encode_text
from train.data.images import decode_image, image_name, undecoded
from train.checkpoint import sha256_file
from train.errors import ImageError, TrainConfigError
from vqtok import VQTokenizer, images_to_tensor, weights_path

log = logging.getLogger(__name__)

MANIFEST = "tessera_codes.json"
PARTIAL_MANIFEST = "tessera_partial.json"
FORMAT = "tessera.codes"
VERSION = 1  # source and shards were added with defaults: version-1 manifests without them still read as before
SHARD_SIZE = 10000  # rows per resumable shard: minutes of work on a CPU, seconds on a GPU

# a skip reason starts with its kind; the manifest counts each kind
SKIP_KINDS = {"empty caption": "skipped_empty_text", "bad image": "skipped_bad_image"}


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """sha256 of the tokenizer's weights file: the identity of the codes it makes."""
    return sha256_file(weights_path(tokenizer_dir))


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
    source: dict | None = None  # what the rows were read from (the caller's description); None in older manifests
    shards: int | None = None  # shards the rows were encoded in; None in older manifests


def check_devices(devices: list[str] | None) -> list[torch.device]:
    """`devices` as torch devices, refusing what cannot work before any worker starts.

    Only what needs no CUDA call is checked: probing CUDA here would keep the
    forked workers from using it.
    """
    try:
        parsed = [torch.device(d) for d in devices or []]
    except RuntimeError as e:  # torch's message names the string it cannot parse
        raise TrainConfigError(f"bad device in {devices}: {e}") from e
    if any(d.type == "cuda" for d in parsed) and not torch.backends.cuda.is_built():
        raise TrainConfigError(f"devices {devices} name CUDA, but this torch was built without it")
    return parsed


def _worker_tokenizer(tokenizer: VQTokenizer, rank: int | None, devices: list[str] | None,
                      threads: int) -> VQTokenizer:
    """The tokenizer on this worker's device; a worker process also takes its share of the CPU cores."""
    if rank is not None and torch.get_num_threads() != threads:  # rank is None in the main process
        torch.set_num_threads(threads)  # num_proc workers x all cores each would oversubscribe the CPU
    if devices:
        device = torch.device(devices[(rank or 0) % len(devices)])
        if next(tokenizer.parameters()).device != device:
            tokenizer.to(device)  # in place: each worker's copy moves once, on its first batch
    return tokenizer


def _encode_batch(
    batch: dict[str, list], indices: list[int], rank: int | None, *, tokenizer: VQTokenizer, text_tokenizer: Any,
    layout: SequenceLayout, resolution: int, offset: int, devices: list[str] | None, threads: int,
) -> dict[str, Any]:
    """Every row of the batch, skipped ones with their reason and zero codes (dropped by the main process)."""
    tokenizer = _worker_tokenizer(tokenizer, rank, devices, threads)
    n = len(indices)
    skip, kept, images, sources, with_source = [""] * n, [], [], [], []
    has_source = layout.context_images > 0
    for j, (i, value, text) in enumerate(zip(indices, batch["image"], batch["text"])):
        if not isinstance(text, str) or not text.strip():
            skip[j] = "empty caption"
            continue
        try:
            image = decode_image(value, resolution, image_name(value, offset + i))
            source = batch["source"][j] if has_source else None
            if source is not None:
                source = decode_image(source, resolution, "source " + image_name(source, offset + i))
        except ImageError as e:
            skip[j] = f"bad image: {e}"
            continue
        kept.append(j)
        images.append(image)
        if source is not None:
            sources.append(source)
            with_source.append(j)
    codes = np.zeros((n, layout.num_image_tokens), dtype=np.int16)
    context = np.full((n, layout.num_image_tokens), ABSENT, dtype=np.int16)
    text_ids = np.zeros((n, layout.text_len), dtype=np.int32)
    truncated = [False] * n
    if kept:
        device = next(tokenizer.parameters()).device
        with torch.inference_mode():
            grid = tokenizer.encode(images_to_tensor(np.stack(images)).to(device)).codes  # (B, h, w)
        # int16: K <= 32768 checked by pretokenize
        codes[kept] = rearrange(grid, "b h w -> b (h w)").to(torch.int16).cpu().numpy()
        if sources:
            with torch.inference_mode():
                grid = tokenizer.encode(images_to_tensor(np.stack(sources)).to(device)).codes  # (B', h, w)
            context[with_source] = rearrange(grid, "b h w -> b (h w)").to(torch.int16).cpu().numpy()
        text = encode_text(text_tokenizer, [batch["text"][j] for j in kept], layout)
        text_ids[kept] = text.ids.to(torch.int32).numpy()  # (B, text_len)
        for j, cut in zip(kept, text.truncated):
            truncated[j] = cut
    out = {"codes": codes, "text_ids": text_ids, "skip": skip, "truncated": truncated}
    return {**out, "context": context} if has_source else out


def _open_partial(partial: Path, plan: dict) -> None:
    """Create the shard directory recording `plan`, or check that an existing one was made with it."""
    path = partial / PARTIAL_MANIFEST
    plan = json.loads(json.dumps(plan))  # as stored: tuples become lists, or every resume would differ
    if path.is_file():
        old = json.loads(path.read_text())
        differs = [k for k in plan if old.get(k) != plan[k]]
        if differs:
            raise TrainConfigError(
                f"{partial} holds shards of an interrupted pre-tokenizing with another {', '.join(differs)} "
                f"({', '.join(f'{k}: {old.get(k)}' for k in differs)}); delete {partial} to start over"
            )
        return
    partial.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(plan, indent=2))
    tmp.replace(path)


def code_features(layout: SequenceLayout) -> Any:
    """The columns `encode_shard` writes, as datasets.Features."""
    import datasets

    columns = {
        "codes": datasets.Sequence(datasets.Value("int16"), length=layout.num_image_tokens),
        "text_ids": datasets.Sequence(datasets.Value("int32"), length=layout.text_len),
        "skip": datasets.Value("string"),
        "truncated": datasets.Value("bool"),
    }
    if layout.context_images:
        columns["context"] = datasets.Sequence(datasets.Value("int16"), length=layout.num_image_tokens)
    return datasets.Features(columns)


def encode_shard(ds: Any, num_proc: int, fn_kwargs: dict, features: Any, batch_size: int, fingerprint: str,
                 desc: str) -> Any:
    """One shard through the tokenizer: `num_proc` workers over contiguous slices (datasets.Dataset.map).

    `fn_kwargs` are `_encode_batch`'s keyword arguments; every row comes back, the
    skipped ones with their reason in the "skip" column (see `code_features`).
    """
    return ds.map(
        _encode_batch,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        with_rank=True,
        remove_columns=ds.column_names,
        features=features,
        num_proc=num_proc if num_proc > 1 else None,  # 1 would still start a pool of one process
        keep_in_memory=True,  # the shard is saved next; no cache file in the data set's cache directory
        load_from_cache_file=False,
        new_fingerprint=fingerprint,  # given, so datasets does not hash the tokenizer's weights for one
        fn_kwargs=fn_kwargs,
        desc=desc,
    )


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    import datasets

    if enabled:
        yield
        return
    datasets.disable_progress_bars()  # the map bars are datasets' own
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def _cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_request(ds: Any, tokenizer: VQTokenizer, layout: SequenceLayout, shard_size: int, num_proc: int,
                   devices: list[str] | None) -> None:
    """Refuse, before any work, what `pretokenize` cannot do with these arguments."""
    if layout.codebook_size > np.iinfo(np.int16).max + 1:
        raise TrainConfigError(f"codebook of {layout.codebook_size} codes does not fit the int16 code column")
    if layout.context_images > 1:
        raise TrainConfigError(f"editing data hold one source image a row; the layout has {layout.context_images}")
    for col in ("image", "text") + (("source",) if layout.context_images else ()):
        if col not in ds.column_names:
            raise TrainConfigError(f"the dataset has no {col!r} column (columns: {', '.join(ds.column_names)})")
    if shard_size < 1 or num_proc < 1:
        raise TrainConfigError(f"shard_size and num_proc must be >= 1, got {shard_size} and {num_proc}")
    targets = check_devices(devices) or [next(tokenizer.parameters()).device]
    if num_proc > 1 and any(d.type == "cuda" for d in targets) and torch.cuda.is_initialized():
        raise TrainConfigError("the workers are forked, and CUDA cannot be used in a fork of a process that has used "
                               "it: pre-tokenize in a fresh process (`tessera tokenize`)")


def _save_shard(coded: Any, shard_dir: Path, start: int) -> None:
    """Log the shard's skipped rows (by their row in the whole data set), then save it under `shard_dir`."""
    for j, reason in enumerate(coded["skip"]):
        if reason:
            log.warning("pre-tokenize: row %d skipped: %s", start + j, reason)
    tmp = shard_dir.with_name(shard_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    coded.save_to_disk(str(tmp))
    tmp.rename(shard_dir)  # a shard exists only once it is complete


def _join_shards(shard_dirs: list[Path]) -> tuple[Any, dict[str, int]]:
    """The finished shards' kept rows as one data set (codes, text_ids), and the counts of the manifest."""
    import datasets

    coded = datasets.concatenate_datasets([datasets.load_from_disk(str(d)) for d in shard_dirs])
    counts = dict.fromkeys(SKIP_KINDS.values(), 0)
    kept = []
    for i, reason in enumerate(coded["skip"]):
        if reason:
            counts[next(v for k, v in SKIP_KINDS.items() if reason.startswith(k))] += 1
        else:
            kept.append(i)
    counts["truncated_text"] = sum(coded["truncated"])
    return coded.select(kept).remove_columns(["skip", "truncated"]), counts


def _save_codes(coded: Any, manifest: CodesManifest, out_dir: Path) -> None:
    """The data set and its manifest, written under a temporary name, then renamed to `out_dir`."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    coded.save_to_disk(str(tmp))
    (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def pretokenize(
    ds: Any,
    tokenizer: VQTokenizer,
    tokenizer_dir: str | Path,
    text_tokenizer: Any,
    layout: SequenceLayout,
    out_dir: str | Path,
    batch_size: int = 256,
    progress: bool = True,
    *,
    source: dict | None = None,
    shard_size: int = SHARD_SIZE,
    num_proc: int = 1,
    devices: list[str] | None = None,
) -> CodesManifest:
    """Encode `ds` (columns image, text) into `out_dir`, in resumable shards of `shard_size` rows.

    `source` describes where the rows come from (recorded in the manifest, and
    a resumed run must match it). `num_proc` workers share the shards' rows;
    with `devices` ("cuda:0", "cuda:1" ...) worker `rank` encodes on
    `devices[rank % len(devices)]`, otherwise where `tokenizer` is. The result
    is written to a temporary name, then renamed.
    """
    _check_request(ds, tokenizer, layout, shard_size, num_proc, devices)
    ds = undecoded(ds, "image")
    if layout.context_images:
        ds = undecoded(ds, "source")
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    sha = tokenizer_fingerprint(tokenizer_dir)
    _open_partial(partial, {"source": source, "layout": layout.to_dict(), "tokenizer_sha256": sha,
                            "rows": len(ds), "shard_size": shard_size})
    tokenizer.eval()
    features = code_features(layout)
    fn_kwargs = dict(tokenizer=tokenizer, text_tokenizer=text_tokenizer, layout=layout,
                     resolution=tokenizer.cfg.resolution, devices=devices, threads=max(1, _cpu_cores() // num_proc))
    n_shards = math.ceil(len(ds) / shard_size)
    shard_dirs = [partial / f"shard-{k:05d}" for k in range(n_shards)]
    with _progress_bars(progress):
        for k, shard_dir in enumerate(shard_dirs):
            if shard_dir.is_dir():
                log.info("pre-tokenize: shard %d/%d was finished by an earlier run", k + 1, n_shards)
                continue
            start = k * shard_size
            coded = encode_shard(
                ds.select(range(start, min(start + shard_size, len(ds)))), num_proc,
                {**fn_kwargs, "offset": start}, features, batch_size, fingerprint=f"tessera-{sha[:16]}-{k:05d}",
                desc=f"pre-tokenizing shard {k + 1}/{n_shards}",
            )
            _save_shard(coded, shard_dir, start)
        coded, counts = _join_shards(shard_dirs)
        if not len(coded):
            shutil.rmtree(partial)  # nothing worth resuming: the data must change first
            raise TrainConfigError(f"pre-tokenizing left no rows ({counts}); see the log for the skipped rows")
        manifest = CodesManifest(
            format=FORMAT, version=VERSION, tokenizer_sha256=sha, tokenizer_dir=str(tokenizer_dir),
            layout=layout.to_dict(), rows=len(coded), **counts, source=source, shards=n_shards,
        )
        _save_codes(coded, manifest, out_dir)
    shutil.rmtree(partial)
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


def check_manifest(manifest: CodesManifest, tokenizer_dir: str | Path, layout: SequenceLayout,
                   source: dict | None = None) -> None:
    """Refuse codes made by another tokenizer, for another layout, or (given `source`) from other data."""
    sha = tokenizer_fingerprint(tokenizer_dir)
    if manifest.tokenizer_sha256 != sha:
        raise TrainConfigError(
            f"the pre-tokenized codes were made by another tokenizer (sha256 {manifest.tokenizer_sha256[:12]}, "
            f"from {manifest.tokenizer_dir}) than {tokenizer_dir} (sha256 {sha[:12]}); pre-tokenize again"
        )
    # row tokens are added when sequences are built and masked padding is how they are attended, neither is
    # stored with the codes: they may differ
    free = ("row_tokens", "mask_padding")
    stored = {"context_images": 0, **{k: v for k, v in manifest.layout.items() if k not in free}}  # 0: saved before it
    if stored != {k: v for k, v in layout.to_dict().items() if k not in free}:
        raise TrainConfigError(
            f"the pre-tokenized codes use layout {manifest.layout}, the generator {layout.to_dict()}; pre-tokenize again"
        )
    # manifests from before the source was recorded cannot be checked: they are trusted, as they were
    if source is not None and manifest.source is not None and manifest.source != source:
        raise TrainConfigError(
            f"the pre-tokenized codes were made from {manifest.source}, the config names {source}; "
            "delete the codes directory to pre-tokenize again"
        )


def _column(ds: Any, name: str) -> torch.Tensor:
    """An Arrow fixed-size list column as one 2-D tensor, keeping the stored dtype."""
    col = ds.data.column(name).combine_chunks()  # FixedSizeListArray
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return torch.from_numpy(flat.reshape(len(col), col.type.list_size).copy())


def load_codes(codes_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole Arrow dataset as tensors: codes (N, h*w) int16 and text ids (N, text_len) int32."""
    import datasets

    ds = datasets.load_from_disk(str(codes_dir))
    return _column(ds, "codes"), _column(ds, "text_ids")


def load_context(codes_dir: str | Path) -> torch.Tensor | None:
    """The context column of editing codes (N, h*w) int16 (-1: no source image), or None for text-to-image codes."""
    import datasets

    ds = datasets.load_from_disk(str(codes_dir))
    return _column(ds, "context") if "context" in ds.column_names else None


__all__ = [
    "CodesManifest",
    "check_devices",
    "check_manifest",
    "code_features",
    "encode_shard",
    "load_codes",
    "load_context",
    "pretokenize",
    "read_manifest",
    "tokenizer_fingerprint",
]
