"""The user's own images and captions, read from a local path with `datasets`' builders.

`data.source` names one of the layouts `datasets` reads without a script
(docs/DATA.md), recognised in this order:

    DIR/ with state.json or dataset_dict.json   a `Dataset.save_to_disk` directory  -> load_from_disk
    DIR/ with *.parquet (at any depth), FILE.parquet                                -> the "parquet" builder
    DIR/ with *.arrow (at any depth), FILE.arrow                                    -> the "arrow" builder
    DIR/ of image files (+ metadata.jsonl / metadata.csv with a file_name column)   -> the "imagefolder" builder

Nothing is downloaded: the builders are packaged with `datasets` and read local
files only. The image column is returned undecoded (`datasets.Image(decode=False)`)
so that the stages decode each image inside their own try/except and skip, count
and name a corrupt one instead of crashing on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.data.images import undecoded
from train.errors import TrainConfigError

SHAPES = "shapes"  # the `data.source` value naming the embedded shapes world instead of a path

IMAGEFOLDER_HELP = "image files, with captions in a metadata.jsonl or metadata.csv that has a file_name column"


def _load(path: Path) -> Any:
    import datasets

    if path.is_file():
        builder = {".parquet": "parquet", ".arrow": "arrow"}.get(path.suffix)
        if builder is None:
            raise TrainConfigError(
                f"data.source {path} is a file but not .parquet or .arrow; give a directory ({IMAGEFOLDER_HELP}), "
                "a save_to_disk directory, or parquet / arrow files"
            )
        return datasets.load_dataset(builder, data_files=[str(path)], split="train")
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):  # a saved DatasetDict: its training split
            if "train" not in ds and len(ds) != 1:
                raise TrainConfigError(
                    f"data.source {path} holds the splits {', '.join(ds)}; none is named 'train': save the one to "
                    "train on with Dataset.save_to_disk"
                )
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    for suffix, builder in ((".parquet", "parquet"), (".arrow", "arrow")):
        files = sorted(str(p) for p in path.rglob(f"*{suffix}"))
        if files:
            return datasets.load_dataset(builder, data_files=files, split="train")
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(path), split="train")
    except (FileNotFoundError, ValueError) as e:  # EmptyDatasetError / "corresponds to no data": no image files
        raise TrainConfigError(f"data.source {path} holds no images ({IMAGEFOLDER_HELP}): {e}") from e


def load_rows(source: str, columns: dict[str, str]) -> Any:
    """The data set at `source` with only `columns` ({new name: its column there}), image undecoded.

    For example `load_rows("my_images", {"image": "image", "text": "caption"})`
    returns columns image and text; a "source" role (editing data: the image before the edit)
    is an image column too. A missing path, a directory without images
    or a missing column raises one TrainConfigError naming the columns found.
    """
    import datasets

    path = Path(source).expanduser()
    if not path.exists():
        raise TrainConfigError(f"data.source {source!r} is neither 'shapes' nor an existing path")
    ds = _load(path)
    found = ", ".join(ds.column_names) or "none"
    for role, name in columns.items():
        if name not in ds.column_names:
            raise TrainConfigError(
                f"data.source {source}: no {role} column {name!r} (columns found: {found}); "
                f"name the right one with data.{role}_column"
            )
    if len(ds) == 0:
        raise TrainConfigError(f"data.source {source} has no rows (columns found: {found})")
    ds = ds.select_columns(list(columns.values()))
    # through temporary names: {"image": "text", "text": "caption"} must not rename onto a column in use
    ds = ds.rename_columns({name: f"__{role}" for role, name in columns.items()})
    ds = ds.rename_columns({f"__{role}": role for role in columns})
    images = [role for role in ("image", "source") if role in columns]  # source: the image before an edit
    for role in images:
        if isinstance(ds.features[role], datasets.Image):
            ds = undecoded(ds, role)
            continue
        try:  # file paths, bytes or {"bytes", "path"} structs (a parquet written without datasets' metadata)
            ds = ds.cast_column(role, datasets.Image(decode=False))
        except (TypeError, ValueError) as e:
            raise TrainConfigError(
                f"data.source {source}: column {columns[role]!r} holds {ds.features[role]}, not images"
            ) from e
    return ds


__all__ = ["SHAPES", "load_rows"]
