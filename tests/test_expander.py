"""The prompt expander: its training pairs (grammar.described / plan), its model (ar_model.expander) and the
`tessera train-expander` / `--expand` path end to end."""

import numpy as np
import pytest
import torch

from ar_model import CheckpointError, train_text_tokenizer
from ar_model.expander import (ExpanderConfig, Ids, build_expander, encode_pairs, expand, load_expander, pair_loss,
                               save_expander)
from tessera.cli import main
from tiny import GEN, TOK, set_args
from train.expander_stage import expander_pairs
from train.data import grammar, shapes

KINDS = {"complete": 0.2, "partial": 0.2, "count": 0.2, "relation": 0.2, "binding": 0.2}


def test_described_draws_as_sample_description_and_names_its_objects_in_mention_order():
    scenes = shapes.sample_scenes(300, seed=3, grid=4, max_objects=16)
    a, b = np.random.default_rng(0), np.random.default_rng(0)
    kinds_seen = set()
    for scene in scenes:
        desc, objs = grammar.described(scene, a, KINDS)
        assert desc == grammar.sample_description(scene, b, KINDS)  # the same draws: training data unchanged
        kinds_seen.add(desc.kind())
        assert sorted(objs, key=lambda o: (o.row, o.col)) == sorted(scene.objects, key=lambda o: (o.row, o.col))
        for m, o in zip(desc.mentions, objs):
            assert all(m.checks(o).values()), (grammar.realise(desc), m, o)
        for r in desc.relations:
            assert r.holds(objs[r.a], objs[r.b])
    assert kinds_seen == set(KINDS)


def test_plan_is_the_complete_description_in_mention_order_equal_mentions_by_cell():
    o = lambda colour, shape, row, col: shapes.Obj(shape, colour, "small", row, col)  # noqa: E731
    circles = [o("red", "circle", 2, 1), o("red", "circle", 0, 3)]
    square = o("blue", "square", 1, 0)
    scene = shapes.Scene(tuple(sorted([*circles, square], key=lambda x: (x.row, x.col))), 4)
    desc = grammar.Description((grammar.Mention("blue", "square"), grammar.Mention("red", "circle"),
                                grammar.Mention("red", "circle")), (), 4)
    text = grammar.plan(desc, [square, *circles])
    assert text == "a blue square in the upper left, a red circle in the top right and a red circle in the lower center left"
    # sizes where the description names them
    assert grammar.plan(grammar.complete(scene, size=True), scene.objects) == grammar.describe(scene)
    assert grammar.plan(grammar.complete(scene), scene.objects) == grammar.realise(grammar.complete(scene))


def test_read_plan_inverts_complete_descriptions_in_every_phrasing_and_refuses_the_rest():
    rng = np.random.default_rng(1)
    for scene in shapes.sample_scenes(400, seed=4, grid=4, max_objects=16):
        desc, objs = grammar.described(scene, rng, KINDS)
        got = grammar.read_plan(grammar.plan(desc, objs), 4)
        assert got is not None and sorted((m.colour, m.shape, m.cell) for m in got) == sorted(
            (o.colour, o.shape, (o.row, o.col)) for o in objs)
        full = grammar.complete(scene, size=True)
        form = grammar.sample_form(full, rng)  # frames, place first: a complete prompt kept as [SAME]
        got = grammar.read_plan(grammar.realise(full, form), 4)
        assert got == full.mentions, (grammar.realise(full, form), got)
    for text in ["a red circle", "three red circles in the top left", "a red circle above a blue square",
                 "a red circle in the top left and two squares", "a red circle in the top left,", "",
                 "a red circle in the top left a blue square in the center"]:
        assert grammar.read_plan(text, 4) is None, text


def test_plan_scorer_passes_the_targets_plans_and_fails_broken_ones():
    from eval.faithfulness import score_plans
    from eval.suites import get_suites

    specs = [s for suite in get_suites(grid=4).values() for s in suite]
    right = [grammar.plan(grammar.complete(s.target, size=True), s.target.objects) for s in specs]
    assert all(v.ok for v in score_plans(right, specs))
    rel = next(s for s in specs if s.relations)
    a, b = rel.target.objects
    swapped = [shapes.Obj(a.shape, a.colour, a.size, b.row, b.col), shapes.Obj(b.shape, b.colour, b.size, a.row, a.col)]
    wrong = grammar.plan(grammar.Description(tuple(grammar.Mention.of(o) for o in swapped), (), 4), swapped)
    sized = next(s for s in specs if any(m.size for m in s.objects))
    bad = score_plans([wrong, "two red circles", grammar.plan(grammar.complete(sized.target), sized.target.objects)],
                      [rel, rel, sized])
    assert [v.ok for v in bad] == [False, False, False] and "relation" in bad[0].failed and "size" in bad[2].failed


@pytest.fixture(scope="module")
def text_tok():
    captions = ["a red circle", "three red circles", "a red circle above a blue square",
                "a small red circle in the top left", "a large blue square in the bottom right"]
    return train_text_tokenizer(captions * 4, vocab_size=300)


def test_pairs_score_only_the_plan(text_tok):
    cfg = ExpanderConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, prompt_len=8, plan_len=12)
    rows, heads = encode_pairs(text_tok, cfg, ["a red circle", "three red circles"],
                               ["a small red circle in the top left", "a red circle"])
    ids = Ids.of(text_tok)
    row = rows[0].tolist()
    assert row[0] == ids.bos and row[int(heads[0]) - 1] == ids.sep and ids.eos in row
    model = build_expander(cfg, ids, seed=0)
    # the cross-entropy of the plan tokens and [EOS] alone, by hand
    logp = torch.log_softmax(model(input_ids=rows.long()).logits.float(), -1)
    nll = []
    for i, (r, h) in enumerate(zip(rows.long(), heads.tolist())):
        end = int((r != ids.pad).sum())
        nll += [-logp[i, t - 1, r[t]] for t in range(h, end)]
    assert torch.allclose(pair_loss(model, rows, heads, ids.pad), torch.stack(nll).mean(), atol=1e-5)
    with pytest.raises(Exception, match="plan_len"):
        encode_pairs(text_tok, cfg, ["a"], ["a small red circle in the top left " * 5])


def test_expander_learns_its_pairs_saves_and_refuses_damaged_weights(text_tok, tmp_path):
    cfg = ExpanderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, prompt_len=16, plan_len=64)
    prompts = ["a red circle", "three red circles", "a red circle above a blue square", "a red circle in the center"]
    plans = ["a small red circle in the top left",
             "a small red circle in the top left, a small red circle in the top right and a small red circle in the center",
             "a large red circle in the top left and a large blue square in the bottom right", None]  # None: [SAME]
    rows, heads = encode_pairs(text_tok, cfg, prompts, plans)
    ids = Ids.of(text_tok)
    model = build_expander(cfg, ids, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = pair_loss(model, rows, heads, ids.pad)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    out = expand(model, text_tok, cfg, prompts)
    assert out.plans == [*plans[:3], prompts[3]] and out.same == [False, False, False, True]
    plans = out.plans
    out = save_expander(model, cfg, text_tok, tmp_path / "expander", {"temperature": 0.0})
    loaded = load_expander(out)
    assert loaded.cfg == cfg
    assert expand(loaded.model, loaded.tokenizer, loaded.cfg, prompts).plans == plans
    sampled = expand(loaded.model, loaded.tokenizer, loaded.cfg, prompts * 2, temperature=1.0, seed=5)
    assert sampled == expand(loaded.model, loaded.tokenizer, loaded.cfg, prompts * 2, temperature=1.0, seed=5)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_expander(out)


EXP = {"model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.intermediate_size": 64,
       "loop.steps": 3, "loop.batch_size": 8, "loop.log_every": 1, "loop.warmup_steps": 1, "loop.device": "cpu",
       "data.train_images": 48, "pairs.scenes": 64}


def test_cli_trains_an_expander_and_samples_through_it(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    assert main(["train-tokenizer", "--run", str(run), "--no-progress", *set_args(TOK)]) == 0
    assert main(["train", "--run", str(run), "--no-progress", *set_args(GEN)]) == 0
    out = tmp_path / "plain"
    assert main(["sample", "--run", str(run), "--prompt", "two red circles", "--n", "1", "--out", str(out),
                 "--expand", "--no-sign", "--no-progress"]) == 2  # no expander yet: a clear error
    assert "tessera train-expander" in capsys.readouterr().err
    assert main(["train-expander", "--run", str(run), "--no-progress", *set_args(EXP)]) == 0
    assert (run / "expander" / "tessera_expander.json").is_file() and (run / "expander_stage.json").is_file()
    with caplog.at_level("DEBUG", logger="pipelines.expansion"):
        assert main(["sample", "--run", str(run), "--prompt", "two red circles", "--n", "2", "--out", str(out),
                     "--expand", "--no-sign", "--no-progress"]) == 0
    assert len(list(out.glob("*.png"))) >= 2
    assert "expanded 'two red circles' -> " in caplog.text
    # a resumed expander keeps its config; another one is refused
    assert main(["train-expander", "--run", str(run), "--no-progress", *set_args({**EXP, "model.hidden_size": 64})]) == 2
    # the diffusion baseline reads the same expansions (pipelines.expansion serves both pipelines)
    from pipelines import open_sampler

    assert main(["train-baseline", "--run", str(run), "--no-progress", *set_args({
        "model.block_out_channels": [8, 16], "model.norm_num_groups": 4, "model.attention_head_dim": 4,
        "model.text_dim": 16, "model.text_layers": 1, "model.text_heads": 2, "loop.steps": 2, "loop.batch_size": 4,
        "loop.log_every": 1, "loop.warmup_steps": 1, "loop.ema_decay": 0.0, "loop.device": "cpu",
        "data.train_images": 32})]) == 0
    base = open_sampler(run, "baseline", device="cpu")
    ar = open_sampler(run, "generator", device="cpu")
    assert base.expand(["two red circles"], 2) == ar.expand(["two red circles"], 2)  # one expander, one answer
    caplog.clear()
    with caplog.at_level("DEBUG", logger="pipelines.expansion"):
        got = base.sample(["two red circles"], n=1, settings=base.settings(steps=2, expand=True))
    assert got.images.shape[0] == 1 and got.sample_config["expand"] is True and "expanded 'two red circles'" in caplog.text
    with pytest.raises(Exception, match="edit instruction"):
        ar.edit(np.zeros((1, ar.resolution, ar.resolution, 3), np.uint8), [["make it blue"]],
                ar.settings(expand=True))


def test_pairs_add_relation_and_single_scenes_and_refuse_bad_shares():
    from train.errors import TrainConfigError
    from train.expander_stage import preset_config

    cfg = preset_config("cpu-long").override({"pairs.scenes": 200, "pairs.relation_share": 0.5,
                                              "pairs.complete_share": 0.1, "pairs.single_share": 0.2})
    captions, plans = expander_pairs(cfg)
    assert len(captions) == len(plans) == 200 * cfg.pairs.per_scene + 20 + 100 + 40
    related = list(zip(captions[-140:-40], plans[-140:-40]))  # the relation scenes, then the single objects
    words = [w for kind in grammar.RELATIONS.values() for w in kind[0]]
    for caption, plan in related:
        assert any(f" {w} " in caption for w in words), caption
        assert plan is not None and len(grammar.read_plan(plan, 4)) == 2
    for plan in plans[-65:-40]:  # the last quarter of the relation scenes: side by side in a row
        (r0, c0), (r1, c1) = [m.cell for m in grammar.read_plan(plan, 4)]
        assert r0 == r1 and abs(c0 - c1) == 1, plan
    assert all(p is None for p in plans[-160:-140])  # complete scenes: [SAME]
    singles = plans[-40:]  # one object each, partly named ([SAME] where every attribute happened to be named)
    assert all(p is None or len(grammar.read_plan(p, 4)) == 1 for p in singles)
    assert sum(p is not None for p in singles) > 20  # ~78%: all named and the cell is 0.55 * 0.4
    for name in ("relation_share", "adjacent_share", "single_share"):
        with pytest.raises(TrainConfigError, match=name):
            cfg.override({f"pairs.{name}": 1.5})
