"""`tessera bench` end to end on tiny models: trains both sides on one budget, evaluates, writes the report."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from eval import bench
from tessera.cli import main
from test_eval_harness import BASE, quick_classifier  # noqa: F401  (the fixture)
from tiny import GEN, TOK, set_args

torch.set_num_threads(1)

SMALL = {  # the protocol shrunk to seconds: 1 sample per prompt, 6 FID images, batch 1 and 2 timed
    "n": 1, "fid_images": 6, "sweep_n": 1, "sweep_fid_images": 6, "speed_images": 2, "sweep_speed_images": 2,
    "large_batch": 2,
    "ar_points": [{"cfg_scale": 1.0}, {"cfg_scale": 3.0, "top_k": 4},
                  {"decoder": "jacobi", "jacobi_window": 4, "cache": "static"}],
    "diffusion_points": [{"sampler": "ddim", "steps": 2}, {"sampler": "dpm++", "steps": 3}],
    "diffusion_main": {"sampler": "ddim", "steps": 2},
}


def test_bench_trains_both_on_one_budget_and_writes_the_report(tmp_path, quick_classifier, capsys):
    run, out = tmp_path / "run", tmp_path / "report"
    base = {k: v for k, v in BASE.items() if k != "loop.steps"}  # the bench sets the baseline's steps
    args = (["bench", "--run", str(run), "--out", str(out), "--no-progress", "--device", "cpu"]
            + set_args(TOK, "tokenizer.") + set_args(GEN, "generator.") + set_args(base, "baseline.")
            + set_args(SMALL, "bench."))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "report written to" in printed and "(AR) vs" in printed

    report = json.loads((out / "bench.json").read_text())
    tr = report["training"]
    # the baseline's step count was chosen to fill the AR side's training wall-clock
    assert tr["ar_seconds"] == pytest.approx(tr["tokenizer_seconds"] + tr["generator_seconds"])
    assert tr["steps"]["tokenizer"] == 4 and tr["steps"]["generator"] == 4
    assert tr["steps"]["baseline"] == json.loads((run / "baseline_stage.json").read_text())["loop"]["steps"] >= 1
    assert tr["baseline_seconds"] > 0
    ar, df = report["main"]
    assert (ar["model"], df["model"]) == ("generator", "baseline")
    assert ar["nfe_per_image"] == 2 * ar["steps_per_image"]  # guidance 1.5: two rows per token
    assert df["nfe_per_image"] == 4 and df["steps_per_image"] == 2  # 2 DDIM steps x 2 rows
    assert ar["flops_per_image"] > 0 and df["flops_per_image"] > 0
    assert set(ar["categories"]) == set(df["categories"]) and ar["images"] == df["images"] == 207
    assert len(report["sweep"]) == 5 and all(p["images"] == 207 and p["fid"] is not None for p in report["sweep"])
    # FLOPs follow the settings: guidance doubles the generator's rows (not the tokenizer decoder's
    # work), and the baseline's cost is linear in its steps
    s = {p["label"]: p for p in report["sweep"]}
    assert s["guidance 3, top-k 4"]["flops_per_image"] > s["guidance 1"]["flops_per_image"]
    # a Jacobi point on the static cache is named and counted (compiled, it is counted uncompiled: the same work)
    assert s["guidance 1.5, jacobi 4 random static cache"]["flops_per_image"] > 0
    assert s["DPM++ 3"]["flops_per_image"] == pytest.approx(1.5 * s["DDIM 2"]["flops_per_image"], rel=0.01)
    assert report["parameters"]["baseline"] == (report["parameters"]["baseline_unet"]
                                                + report["parameters"]["baseline_text_encoder"])

    md = (out / "report.md").read_text()
    for needle in ("| faithfulness: position (%) |", "| FID (classifier features) |", "| images/s, batch 2 |",
                   "| GFLOPs per image |", "| network evaluations per image |", "| parameters |",
                   "| training time (s) |", "| diffusion | DPM++ 3 |", "faithfulness_vs_speed.png"):
        assert needle in md, needle
    for png in ("faithfulness_vs_speed.png", "fid_vs_speed.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / ar["report"]).is_file() and (out / df["report"]).is_file()

    # a second bench on the same run trains nothing again
    stamp = (run / "baseline" / "model.safetensors").stat().st_mtime_ns
    args2 = ["bench", "--run", str(run), "--out", str(tmp_path / "again"), "--no-progress", "--device", "cpu",
             *set_args({**SMALL, "ar_points": [], "diffusion_points": [{"steps": 1}]}, "bench.")]
    assert main(args2) == 0
    assert (run / "baseline" / "model.safetensors").stat().st_mtime_ns == stamp
    again = json.loads((tmp_path / "again" / "bench.json").read_text())
    assert again["training"]["steps"] == tr["steps"]

    # bench.suites chooses what both sides are scored on (the cpu-text preset: the text suites)
    args3 = ["bench", "--run", str(run), "--out", str(tmp_path / "text"), "--no-progress", "--device", "cpu",
             *set_args({**SMALL, "ar_points": [], "diffusion_points": [{"steps": 1}], "suites": ["text"]}, "bench.")]
    assert main(args3) == 0
    text = json.loads((tmp_path / "text" / "bench.json").read_text())
    assert [set(m["categories"]) for m in text["main"]] == [{"text"}, {"text"}]
    assert all(0 <= m["text"]["text"]["chars"] <= 1 for m in text["main"])
    md = (tmp_path / "text" / "report.md").read_text()
    assert "| text: strings exact (%) |" in md and "| text: characters right (%) |" in md


def test_bad_bench_options_are_clear_errors(tmp_path, capsys):
    assert main(["bench", "--run", str(tmp_path / "r"), "--set", "bench.nn=2"]) == 2
    assert "unknown bench setting 'nn'" in capsys.readouterr().err
    assert main(["bench", "--run", str(tmp_path / "r"), "--set", "bench.n=0"]) == 2
    assert "bench n must be >= 1" in capsys.readouterr().err
    assert main(["bench", "--run", str(tmp_path / "r"), "--set", "painter.loop.steps=3"]) == 2
    assert "bench --set keys start with" in capsys.readouterr().err
    bad = {"ar_points": [{"guidance": 2}]}
    assert main(["bench", "--run", str(tmp_path / "r"), *set_args(bad, "bench.")]) == 2
    assert "unknown AR sweep field 'guidance'" in capsys.readouterr().err


def test_training_seconds_reads_the_log_or_sums_old_ones(tmp_path):
    (tmp_path / "metrics").mkdir()
    rows = [{"step": 10, "items_per_s": 20.0, "seconds": 32.0}, {"step": 20, "items_per_s": 40.0, "seconds": 48.5}]
    (tmp_path / "metrics" / "generator.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.training_seconds(tmp_path, "generator") == 48.5
    # a log from before "seconds": items / items_per_s per line (batch 8, grad_accum 2 -> 16 items a step)
    old = [{"step": 10, "items_per_s": 20.0}, {"step": 20, "items_per_s": 40.0}, {"step": 25, "items_per_s": 80.0}]
    (tmp_path / "metrics" / "tokenizer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "tokenizer_stage.json").write_text(json.dumps({"loop": {"batch_size": 8, "grad_accum": 2}}))
    assert bench.training_seconds(tmp_path, "tokenizer") == pytest.approx(160 / 20 + 160 / 40 + 80 / 80)
    with pytest.raises(bench.BenchError, match="baseline.jsonl is missing"):
        bench.training_seconds(tmp_path, "baseline")


def test_bench_trains_the_expander_an_expanding_generator_recommends_and_both_sides_read_it(tmp_path, quick_classifier):
    from test_expander import EXP

    run, out = tmp_path / "run", tmp_path / "report"
    base = {k: v for k, v in BASE.items() if k != "loop.steps"}
    small = {**SMALL, "ar_points": [], "diffusion_points": [{"steps": 1}], "suites": ["binding"]}
    args = (["bench", "--run", str(run), "--out", str(out), "--no-progress", "--device", "cpu"]
            + set_args({**GEN, "sample.expand": True}, "generator.") + set_args(TOK, "tokenizer.")
            + set_args(base, "baseline.") + set_args(EXP, "expander.") + set_args(small, "bench."))
    assert main(args) == 0
    report = json.loads((out / "bench.json").read_text())
    tr = report["training"]
    assert (run / "expander" / "tessera_expander.json").is_file() and tr["steps"]["expander"] == 3
    assert tr["expander_seconds"] > 0 and tr["ar_seconds"] == pytest.approx(tr["tokenizer_seconds"] + tr["generator_seconds"])
    assert [m["settings"]["expand"] for m in report["main"] + report["sweep"]] == [True, True, True]
    assert "prompt expander's expansions" in (out / "report.md").read_text()
    assert all("prompts expanded first" in (out / m["report"]).read_text() for m in report["main"])  # speed's note
