"""The figures the training loop draws, given to it through its ``figures`` hook
(:class:`gaugeformer.train.loop.Figures`): the library never imports this package."""

from __future__ import annotations

from pathlib import Path

from gaugeformer.stats import KeyPattern
from gaugeformer.train.loop import AttentionSnapshot

from diagnostics.figures import plot_attention_with_context, plot_training_curves


class TrainingFigures:
    """``curves.png`` and ``attention/step_XXXXXX/attention_context_L{l}.png``."""

    def curves(self, series: list[dict], out: Path, title: str) -> None:
        plot_training_curves(series, out, title=title)

    def attention(self, snapshot: AttentionSnapshot) -> None:
        cfg = snapshot.config
        plot_attention_with_context(snapshot.beta, snapshot.kl, snapshot.pieces,
                                    list(cfg.head_labels), snapshot.caption, snapshot.out_dir,
                                    keys=KeyPattern.of(cfg), kappa=cfg.kappa_beta)


FIGURES = TrainingFigures()
