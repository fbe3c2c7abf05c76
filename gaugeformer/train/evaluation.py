"""What a training run measures at an evaluation: the validation loss over the whole split, and the
attention of a fixed validation sequence (row_std per head, a table, figures through a hook).

Figures are drawn by the caller's :class:`Figures` (``diagnostics.training.FIGURES`` in the CLI), so
the library does not depend on its consumer; the statistics are :mod:`gaugeformer.stats`'.
"""

import dataclasses
import math
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gaugeformer import stats
from gaugeformer.capture import capture_jit
from gaugeformer.config import ModelConfig
from gaugeformer.data.batches import EvalBatches
from gaugeformer.data.tokenizer import Tokenizer
from gaugeformer.model.lm import GaugeTransformerLM
from gaugeformer.train.runtime import Placement
from gaugeformer.train.steps import LossWeights, eval_step


@dataclasses.dataclass(frozen=True)
class AttentionSnapshot:
    """The attention of the fixed validation sequence at one evaluation, for a figure hook."""

    step: int
    beta: np.ndarray  # [L, 1, H, N, N]
    kl: np.ndarray  # [L, 1, H, N, N]
    pieces: list[bytes]
    text: str
    config: ModelConfig
    caption: dict
    out_dir: Path


class Figures(Protocol):
    """What the trainer draws, supplied by the caller (``diagnostics.training.FIGURES``), so the
    library does not depend on its consumer."""

    def curves(self, series: list[dict], out: Path, title: str) -> None: ...

    def attention(self, snapshot: AttentionSnapshot) -> None: ...

    def uniformity(self, model: Any, tokens: jax.Array, out_dir: Path) -> dict[str, float]:
        """Per-head uniformity attribution of the fixed sequence (written under ``out_dir``);
        returns scalar ``fixed/...`` entries for ``metrics.jsonl``."""
        ...


def validation_loss(model: GaugeTransformerLM, evals: EvalBatches, place: Placement,
                    weights: LossWeights, max_batches: int | None) -> dict[str, float]:
    """CE and PPL over every validation target (or the first ``max_batches`` batches), and the
    free-energy terms averaged over the full batches: the ``eval/*`` scalars but
    ``eval/seconds``."""
    outs = []
    for i, batch in enumerate(evals):
        if max_batches is not None and i >= max_batches:
            break
        x, y, mask = place.put_batch(batch.x, batch.y, batch.mask)
        outs.append(eval_step(model, x, y, mask, weights=weights))
    outs = jax.device_get(outs)
    count = sum(float(o["count"]) for o in outs)
    ce = sum(float(o["ce_sum"]) for o in outs) / max(count, 1.0)
    full = [o for o in outs if bool(o["full"])] or outs
    align = float(np.mean([o["align"] for o in full]))
    self_c = float(np.mean([o["self"] for o in full]))
    return {"eval/ce": ce, "eval/ppl": math.exp(min(ce, 700.0)), "eval/belief_align": align,
            "eval/self_consistency": self_c, "eval/loss_total": ce + align + self_c,
            "eval/tokens": int(count), "eval/batches": len(outs)}


@dataclasses.dataclass(frozen=True)
class FixedAttention:
    """β and KL ``[L, 1, H, N, N]`` of the fixed sequence, and row_std ``[L, H]`` (valid keys and
    the reference's legacy form)."""

    beta: np.ndarray
    kl: np.ndarray
    valid: np.ndarray
    legacy: np.ndarray

    def scalars(self) -> dict[str, float]:
        """``fixed/L{l}/h{h}/row_std`` and ``.../row_std_reference`` for ``metrics.jsonl``."""
        out = {}
        n_layers, n_heads = self.valid.shape
        for layer in range(n_layers):
            for h in range(n_heads):
                out[f"fixed/L{layer}/h{h}/row_std"] = float(self.valid[layer, h])
                out[f"fixed/L{layer}/h{h}/row_std_reference"] = float(self.legacy[layer, h])
        return out

    def table(self, labels: tuple[str, ...]) -> str:
        """The markdown row_std table (:func:`gaugeformer.stats.row_std_table`)."""
        return stats.row_std_table(self.valid, self.legacy, labels)


def fixed_attention(model: GaugeTransformerLM, cfg: ModelConfig, tokens: jax.Array
                    ) -> FixedAttention:
    """Capture β/KL of ``tokens [1, N]`` and their row_std under ``cfg``'s key pattern."""
    got = jax.device_get(capture_jit(model, tokens))
    beta, kl = np.asarray(got.beta), np.asarray(got.kl)
    mask = stats.model_valid_keys(cfg, beta.shape[-1])
    valid = np.asarray(stats.row_std_valid(jnp.asarray(beta[:, 0]), mask))
    legacy = np.asarray(stats.row_std_legacy(jnp.asarray(beta[:, 0])))
    return FixedAttention(beta, kl, valid, legacy)


def save_attention(figures: Figures, fixed: FixedAttention, *, step: int, tokens: np.ndarray,
                   tokenizer: Tokenizer, cfg: ModelConfig, source: str, checkpoint: str,
                   window: int, out_dir: Path) -> None:
    """The figure hook's attention figures and ``row_std.md`` of one evaluation, in ``out_dir``.

    Args:
      source: the corpus description; ``window``: the fixed sequence's validation window.
      checkpoint: the caption's checkpoint label (``"<run> @ step <s>"``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces = tokenizer.pieces(tokens)
    text = b"".join(pieces).decode("utf-8", errors="replace")
    caption = {"source": f"{source}, validation window #{window}", "text_preview": text,
               "checkpoint": checkpoint, "self_attention_masked": cfg.mask_self_attention}
    figures.attention(AttentionSnapshot(step, fixed.beta, fixed.kl, pieces, text, cfg, caption,
                                        out_dir))
    (out_dir / "row_std.md").write_text(
        f"# Attention row_std at step {step}\n\nSequence (validation window #{window}):\n\n"
        f"```\n{text}\n```\n\n{fixed.table(cfg.head_labels)}\n", encoding="utf-8")
