"""notebooks/sampling.ipynb executes top to bottom against a tiny run, and is committed without outputs."""

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import pytest
import torch

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")  # with ipykernel: the dev extra's nbmake
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from tessera.cli import main
from tiny import GEN, TOK, set_args
from vqtok import load_tokenizer

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "sampling.ipynb"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with a tiny tokenizer and a tiny generator, trained through the CLI."""
    path = tmp_path_factory.mktemp("nb") / "run"
    assert main(["train-tokenizer", "--run", str(path), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(path), "--no-progress", *set_args(GEN)]) == 0
    return path


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one code cell tagged {tag!r} in {NOTEBOOK.name}, found {len(cells)}"
    return cells[0]


def _pngs(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    stored = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, f"cells {stored} of {NOTEBOOK} have stored outputs: clear them before committing"


def _execute(run, monkeypatch):
    # the kernel inherits this process's environment; monkeypatch puts it back afterwards
    monkeypatch.setenv("TESSERA_RUN", str(run))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # a failing cell raises CellExecutionError with the cell's source and traceback
    return nb


def test_notebook_executes_on_a_tiny_run(run, monkeypatch):
    nb = _execute(run, monkeypatch)

    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    # every figure that matters was drawn: the sample grid, the guidance sweep, the reconstructions, two code grids
    counts = {tag: _pngs(_tagged(nb, tag)) for tag in ("sample-grid", "cfg-sweep", "reconstruction", "code-grid")}
    assert counts == {"sample-grid": 1, "cfg-sweep": 1, "reconstruction": 1, "code-grid": 2}, counts

    # what it printed describes this run, not some other one
    g = load_tokenizer(run / "tokenizer").cfg.grid_size
    loaded = "".join(_stdout(c) for c in nb.cells if c.cell_type == "code")
    assert f"run:       {run} on " in loaded and f"<-> {g}x{g} codes" in loaded, loaded
    sampled = _stdout(_tagged(nb, "sample-grid"))
    images = re.search(r"^(\d+) images of \d+x\d+ px", sampled, re.M)
    assert images and int(images[1]) > 0 and "warnings:" in sampled, sampled
    changed = [int(m) for m in re.findall(rf"changed (\d+) of {g * g} codes", _stdout(_tagged(nb, "reconstruction")))]
    assert len(changed) == 2 and all(0 <= c <= g * g for c in changed), changed
    grids = re.findall(r"code grid (\d+) x (\d+) = (\d+) codes per image", _stdout(_tagged(nb, "code-grid")))
    assert grids == [(str(g), str(g), str(g * g))] * 2, grids
    assert "trained for text-to-image" in _stdout(_tagged(nb, "edit-chain"))  # and says there is nothing to edit


def test_notebook_edits_with_an_editing_run(tmp_path, monkeypatch):
    run = tmp_path / "edit"
    assert main(["train-tokenizer", "--run", str(run), "--no-progress", *set_args({**TOK, "data.tones": True})]) == 0
    assert main(["train", "--run", str(run), "--no-progress", *set_args({**GEN, "data.task": "edit"})]) == 0
    nb = _execute(run, monkeypatch)
    cell = _tagged(nb, "edit-chain")
    assert _pngs(cell) == 1
    assert re.findall(r"^turn (\d): ", _stdout(cell), re.M) == ["1", "2", "3"], _stdout(cell)
