"""Real data nobody here wrote: scikit-learn's 1,797 scanned handwritten digits through the README's own-data commands.

    python benchmarks/digits.py --out runs/digits [--max-epochs 0 --max-epochs 8 ...] [--n 8] [--resolution 24]

1. writes the digits (8x8, 17 grey levels, bundled in the scikit-learn wheel: nothing is downloaded)
   as an image folder, each scaled to the tokenizer's resolution, with captions "a handwritten digit 7";
2. runs the README's own-data commands with the cpu presets (`tessera train-tokenizer`, `tokenize`,
   `train`; a tenth of the rows held out with `data.val_split=0.1`, the validation loss every 50
   steps), once per `--max-epochs` value (`loop.max_epochs`: 0 = the preset's step count, no cap;
   `auto` = the default, the cap for own data), each generator in its own run sharing one tokenizer;
3. scores each run with `tessera eval` (the memorisation report: nearest training row, near
   copies, distinct samples per prompt, against the held-out rows) and with an independent
   judge: a support-vector classifier fitted on the training rows at 8x8 (scikit-learn), applied to
   every sample shrunk to 8x8, against the digit its prompt asked for (its accuracy on the
   held-out real rows is the judge's own ceiling).

Prints one table; writes the numbers as JSON to OUT/digits.json. Every step is a CLI call, so a
killed run picks up where it stopped (each command resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

WORDS = "zero one two three four five six seven eight nine".split()


def write_digits(folder: Path, resolution: int, rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The digits (the first `rows`, default all) as an image folder at `resolution` px (bilinear from 8x8);
    returns (images (N, 8, 8) on 0..16, labels (N,))."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images, labels = d.images[:rows], d.target[:rows]  # (1797, 8, 8) in 0..16, (1797,)
    if (folder / "metadata.jsonl").exists():
        return images, labels
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, y) in enumerate(zip(images, labels)):
        pixels = Image.fromarray(np.round(img * 255 / 16).astype(np.uint8), "L")
        pixels.resize((resolution, resolution), Image.BILINEAR).convert("RGB").save(folder / f"{i:04d}.png")
        rows.append({"file_name": f"{i:04d}.png", "text": f"a handwritten digit {y}"})
    tmp = folder / "metadata.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(folder / "metadata.jsonl")  # last: a folder with metadata is complete
    return images, labels


def tessera(*args: str) -> None:
    cmd = [sys.executable, "-m", "tessera.cli", *args, "--no-progress"]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


def shrink(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (B, R, R, 3) -> (B, 64) grey on the digits' 0..16 scale, area-averaged to 8x8."""
    grey = images.astype(np.float64).mean(-1)
    b, r = grey.shape[:2]
    f = r // 8
    return grey[:, : 8 * f, : 8 * f].reshape(b, 8, f, 8, f).mean((2, 4)).reshape(b, 64) * 16 / 255


def judge(run: Path, train_idx: np.ndarray, val_idx: np.ndarray, images: np.ndarray, labels: np.ndarray,
          resolution: int, n: int, seed: int) -> dict:
    """Accuracy of an SVC fitted on the training rows (8x8) on `n` samples per digit, and on the held-out rows."""
    from PIL import Image
    from sklearn.svm import SVC

    from pipelines import open_sampler

    # the judge sees what the generator saw: the training rows at `resolution`, shrunk back to 8x8
    def through(idx: np.ndarray) -> np.ndarray:
        up = [np.asarray(Image.fromarray(np.round(images[i] * 255 / 16).astype(np.uint8), "L")
                         .resize((resolution, resolution), Image.BILINEAR).convert("RGB")) for i in idx]
        return shrink(np.stack(up))

    clf = SVC(gamma="scale").fit(through(train_idx), labels[train_idx])
    heldout = float((clf.predict(through(val_idx)) == labels[val_idx]).mean())
    pipe = open_sampler(str(run), "generator", device="cpu", progress=False)
    result = pipe.sample([f"a handwritten digit {d}" for d in range(10)], n=n, settings=pipe.settings(seed=seed))
    asked = np.repeat(np.arange(10), n)
    predicted = clf.predict(shrink(np.asarray(result.images)))
    per_digit = [float((predicted[asked == d] == d).mean()) for d in range(10)]
    return {"samples": int(len(asked)), "accuracy": float((predicted == asked).mean()), "per_digit": per_digit,
            "heldout_accuracy": heldout}


def validation_curve(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics" / "generator.jsonl").read_text().splitlines() if line]
    return [{"step": r["step"], "epoch": r.get("epoch"), "val_loss": r["val_loss"]} for r in rows if "val_loss" in r]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/digits", help="folder for the data, the runs and digits.json")
    p.add_argument("--max-epochs", action="append", dest="caps",
                   help="loop.max_epochs per generator run: a number (0 = no cap: the preset's steps) or auto "
                        "(repeat; default: 0 and auto)")
    p.add_argument("--resolution", type=int, default=24, help="the tokenizer's resolution (the cpu preset's 24)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt, for memorisation and for the judge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--rows", type=int, help="only the first ROWS digits (default: all 1,797)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="SECTION.KEY=VALUE",
                   help="more settings for the generator's commands (tokenize, train)")
    p.add_argument("--tokenizer-set", action="append", default=[], dest="tok_sets", metavar="SECTION.KEY=VALUE",
                   help="more settings for train-tokenizer")
    args = p.parse_args(argv)
    caps = args.caps or ["0", "auto"]
    out = Path(args.out)
    data = out / "data"
    images, labels = write_digits(data, args.resolution, args.rows)
    from train.loop import split_rows

    common = ["--preset", args.preset, "--set", f"data.source={data}", "--set", "data.val_split=0.1"]
    tok = out / "tokenizer-run"
    tessera("train-tokenizer", "--run", str(tok), *common, "--set", f"vq.resolution={args.resolution}",
            *(x for a in args.tok_sets for x in ("--set", a)))
    results = {}
    for cap in caps:
        run = out / f"epochs-{cap}"
        if not (run / "tokenizer").exists():
            run.mkdir(parents=True, exist_ok=True)
            import shutil

            shutil.copytree(tok / "tokenizer", run / "tokenizer")
        gen = [*common, "--set", "loop.val_every=50", *(x for a in args.sets for x in ("--set", a))] + (
            [] if cap == "auto" else ["--set", f"loop.max_epochs={cap}"])
        tessera("tokenize", "--run", str(run), *gen)
        tessera("train", "--run", str(run), *gen)
        tessera("eval", "--run", str(run), "--n", str(args.n), "--seed", str(args.seed))
        report = json.loads((run / "eval" / "result.json").read_text())
        recorded = json.loads((run / "generator_stage.json").read_text())
        seed = recorded["data"].get("seed", 0)
        train_idx, val_idx = (np.asarray(x) for x in split_rows(len(labels), 0.1, seed))
        curve = validation_curve(run)
        results[cap] = {"steps": recorded["loop"]["steps"], "epochs": curve[-1]["epoch"] if curve else None,
                        "validation": curve, "memorisation": report["memorisation"],
                        "judge": judge(run, train_idx, val_idx, images, labels, args.resolution, args.n, args.seed)}
    lines = ["| loop.max_epochs | steps | passes | val loss: lowest (step) / last | median RMS to nearest train "
             "(held-out rows) | near copies (held-out rows) | distinct / prompt | judged right (real held-out) |",
             "|---|---:|---:|---|---|---|---:|---|"]
    for cap, r in results.items():
        curve, m, j = r["validation"], r["memorisation"], r["judge"]
        best = min(curve, key=lambda c: c["val_loss"])
        g, h = m["generated"], m["heldout"]
        lines.append(f"| {cap} | {r['steps']} | {r['epochs']} | {best['val_loss']:.3f} ({best['step']}) / "
                     f"{curve[-1]['val_loss']:.3f} | {g['median_rms']:.1f} ({h['median_rms']:.1f}) | "
                     f"{100 * g['near_copies']['rate']:.1f}% ({100 * h['near_copies']['rate']:.1f}%) | "
                     f"{100 * m['distinct_per_prompt']:.1f}% | {100 * j['accuracy']:.1f}% "
                     f"({100 * j['heldout_accuracy']:.1f}%) |")
    print("\n".join(lines))
    (out / "digits.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
