"""Prompt expansion for either pipeline: the run's prompt expander (ar_model.expander) rewrites each prompt as a
complete description before the image model reads it (`expand` in the sampling settings)."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from ar_model import CheckpointError
from ar_model.expander import expand, load_expander, read_expander_meta

log = logging.getLogger(__name__)


class PromptExpansion:
    """Mixin for a pipeline with `origin` ({"dirs": {"expander": path}} when its run has one) and `device`."""

    origin: dict
    device: Any
    _expander: Any = None
    _expander_temperature: float = 0.0

    def expander(self) -> Any:
        """The run's prompt expander (ar_model.expander.LoadedExpander), loaded once; a CheckpointError naming
        the command that trains one when the run has none."""
        if self._expander is None:
            path = self.origin.get("dirs", {}).get("expander")
            if path is None:
                raise CheckpointError("sampling with expand: this run has no prompt expander (RUN/expander): train "
                                      "one with `tessera train-expander --run RUN`")
            self._expander = load_expander(path, self.device)
            self._expander_temperature = float(read_expander_meta(path).get("temperature", 0.0))
        return self._expander

    def expand(self, prompts: Sequence[str], n: int = 1, seed: int | None = 0) -> list[str]:
        """Each prompt rewritten `n` times (prompt-major) by the run's prompt expander as a complete description,
        at the temperature recorded with it (0: greedy, the same description n times)."""
        ex = self.expander()
        said = [p for p in prompts for _ in range(n)]
        out = expand(ex.model, ex.tokenizer, ex.cfg, said, self._expander_temperature, seed)
        for p, cut in zip(said[::n] if n else [], out.truncated[::n] if n else []):
            if cut:
                log.warning("prompt longer than the expander's %d text tokens, truncated: %r", ex.cfg.prompt_len, p[:60])
        for p, q in zip(said, out.plans):
            log.debug("expanded %r -> %r", p, q)
        return out.plans

    def prompts_to_read(self, prompts: Sequence[str], n: int, expand_: bool, seed: int | None) -> list[str]:
        """What the image model reads for `n` samples of each prompt (prompt-major): the prompts, or expanded."""
        return self.expand(prompts, n, seed) if expand_ else [p for p in prompts for _ in range(n)]


__all__ = ["PromptExpansion"]
