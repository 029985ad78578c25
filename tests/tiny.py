"""The tiny stage settings the end-to-end tests train with (seconds on 2 cores), `--set` arguments for them, and the
commands of the docs' example blocks.

Imported by the test modules (pytest puts tests/ on sys.path); tests override single keys with {**GEN, ...}.
"""

import json
import re
import shlex
from pathlib import Path

TOK = {
    "vq.base_channels": 16, "vq.channel_mult": [1, 2, 2], "vq.latent_dim": 16, "vq.codebook_size": 32,
    "vq.norm_groups": 4, "loop.steps": 4, "loop.batch_size": 8, "loop.log_every": 1, "loop.warmup_steps": 1,
    "loop.device": "cpu", "data.train_images": 64,
}
GEN = {
    "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.intermediate_size": 64, "loop.steps": 4, "loop.batch_size": 8, "loop.log_every": 1,
    "loop.warmup_steps": 1, "loop.ckpt_every": 2, "loop.device": "cpu", "data.train_images": 48,
}


def set_args(d: dict, prefix: str = "") -> list[str]:
    """`--set KEY=JSON` for each setting of `d` (prefix: e.g. "generator." for the demo)."""
    return [a for k, v in d.items() for a in ("--set", f"{prefix}{k}={json.dumps(v)}")]


def doc_commands(doc: Path, marker: str) -> list[list[str]]:
    """The `tessera ...` lines of the bash block between `<!-- MARKER:begin -->` and `<!-- MARKER:end -->` in
    `doc`, as argv lists without the leading `tessera` (what a test runs through tessera.cli.main)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = re.search(rf"{begin}\s*```bash\n(.*?)```\s*{end}", doc.read_text(), re.S)
    assert block, f"{doc.name} lacks the {marker} block"
    return [shlex.split(line)[1:] for line in block.group(1).splitlines() if line.startswith("tessera ")]
