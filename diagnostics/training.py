"""The figures the training loop draws, given to it through its ``figures`` hook
(:class:`gaugeformer.train.evaluation.Figures`): the library never imports this package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gaugeformer.stats import KeyPattern
from gaugeformer.train.evaluation import AttentionSnapshot

from diagnostics import attribution as attr_lib
from diagnostics.figures import plot_attention_with_context, plot_training_curves


class TrainingFigures:
    """``curves.png``, ``attention/step_XXXXXX/attention_context_L{l}.png`` and the per-head
    uniformity attribution ``attention/step_XXXXXX/uniformity.{json,md}``."""

    def curves(self, series: list[dict], out: Path, title: str) -> None:
        plot_training_curves(series, out, title=title)

    def attention(self, snapshot: AttentionSnapshot) -> None:
        cfg = snapshot.config
        plot_attention_with_context(snapshot.beta, snapshot.kl, snapshot.pieces,
                                    list(cfg.head_labels), snapshot.caption, snapshot.out_dir,
                                    keys=KeyPattern.of(cfg), kappa=cfg.kappa_beta)

    def uniformity(self, model: Any, tokens: Any, out_dir: Path) -> dict[str, float]:
        attr = attr_lib.attribute(model, tokens)
        (out_dir / "uniformity.json").write_text(json.dumps(attr, indent=1), encoding="utf-8")
        (out_dir / "uniformity.md").write_text(
            f"{attr_lib.render_table(attr)}\n\n```\n{attr_lib.format_scenarios(attr)}\n```\n",
            encoding="utf-8")
        out = {}
        for layer in attr["layers"]:
            for cause in attr_lib.CAUSES:
                n = sum(hd["uniformity"]["cause"] == cause for hd in layer["heads"])
                out[f"fixed/L{layer['layer']}/heads_{cause}"] = float(n)
        return out


FIGURES = TrainingFigures()
