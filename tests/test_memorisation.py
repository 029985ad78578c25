"""Memorisation in `tessera eval` for own data: the measure flags a copy, passes a held-out image, and runs end to end."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from eval.memorisation import NEAR_COPY_RMS, best_code_match, nearest_rms, summary
from tessera.cli import main
from tiny import GEN, TOK, set_args
from train.data import grammar, shapes

torch.set_num_threads(1)


def test_an_exact_copy_is_flagged_and_a_held_out_image_is_not():
    scenes = shapes.sample_scenes(40, seed=3, max_objects=2)
    train = torch.from_numpy(shapes.render_batch(scenes[:30], 24))  # (30, 24, 24, 3)
    held_out = torch.from_numpy(shapes.render_batch(scenes[30:], 24))
    copy = train[7:8].clone()
    noise = torch.randint(-4, 5, copy.shape, generator=torch.Generator().manual_seed(1))
    near = (copy.int() + noise).clamp(0, 255).to(torch.uint8)  # a copy with a little noise: still a copy
    rms = nearest_rms(torch.cat([copy, near, held_out]), train)
    assert rms[0] == 0 and rms[1] < NEAR_COPY_RMS
    distinct = [s for s in scenes[30:] if s not in scenes[:30]]
    assert len(distinct) >= 8 and (rms[2:] >= NEAR_COPY_RMS).sum() >= 8  # different scenes are far apart
    codes = torch.randint(0, 16, (30, 36), generator=torch.Generator().manual_seed(0))
    match = best_code_match(torch.cat([codes[3:4], torch.randint(0, 16, (1, 36))]), codes)
    assert match[0] == 1 and match[1] < 0.5
    s = summary(rms[:2], match[:1].repeat(2), NEAR_COPY_RMS)
    assert s["near_copies"]["rate"] == 1.0 and s["images"] == 2


def _images(folder, n: int = 40) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, scene in enumerate(shapes.sample_scenes(n, seed=11, max_objects=2)):
        Image.fromarray(shapes.render(scene, 24)).save(folder / f"{i:03d}.png")
        lines.append({"file_name": f"{i:03d}.png", "text": grammar.caption(scene, rng, "complete")})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_eval_on_an_own_data_run_reports_memorisation_against_the_held_out_rows(tmp_path, capsys, monkeypatch):
    import eval.speed

    timed, measure = [], eval.speed.measure_sampling
    monkeypatch.setattr(eval.speed, "measure_sampling",
                        lambda pipe, prompts, *a, **k: timed.append(list(prompts)) or measure(pipe, prompts, *a, **k))
    _images(tmp_path / "imgs")
    run, own = tmp_path / "run", {"data.source": str(tmp_path / "imgs")}
    tok = {k: v for k, v in TOK.items() if k != "data.train_images"}
    gen = {k: v for k, v in GEN.items() if k != "data.train_images"}
    assert main(["train-tokenizer", "--run", str(run), "--no-progress", *set_args({**tok, **own})]) == 0
    assert main(["train", "--run", str(run), "--no-progress",
                 *set_args({**gen, **own, "data.val_split": 8, "loop.val_every": 2})]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--n", "2", "--speed-batch-sizes", "2",
                 "--no-progress", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    captions = {json.loads(x)["text"] for x in (tmp_path / "imgs" / "metadata.jsonl").read_text().splitlines()}
    assert timed and set(timed[0]) <= captions  # speed is timed on the run's own captions, not the position suite
    assert "memorisation:" in out and "held-out real rows" in out
    result = json.loads((tmp_path / "e" / "result.json").read_text())
    m = result["memorisation"]
    assert m["prompts"] == 8 and m["prompt_source"] == "held-out rows" and m["train_rows"] == 32
    assert m["generated"]["images"] == 16 and m["heldout"]["images"] == 8
    assert 0 <= m["generated"]["near_copies"]["rate"] <= 1 and 0 < m["distinct_per_prompt"] <= 1
    assert result["config"]["suites"] == [] and result["fid"] is None and result["tokenizer"] is None
    assert [r["batch_size"] for r in result["speed"]["rows"]] == [2]
    assert "## Memorisation (own data)" in (tmp_path / "e" / "report.md").read_text()
