"""The run's log: ``metrics.jsonl`` (the source of truth), ``metrics.csv``, ``curves.png``, the
optional TensorBoard mirror, the progress bar and console lines; a no-op off process 0.
"""

import csv
import json
from pathlib import Path

from tqdm.auto import tqdm

from gaugeformer.train import metrics as mlib
from gaugeformer.train.config import RunConfig
from gaugeformer.train.evaluation import Figures
from gaugeformer.train.integrations import open_tensorboard


class RunLog:
    """``metrics.jsonl`` (+ CSV), progress bar and console lines; a no-op off process 0."""

    def __init__(self, workdir: Path, run_cfg: RunConfig, start_step: int, active: bool,
                 figures: Figures | None = None):
        self.workdir, self.cfg, self.active, self.figures = workdir, run_cfg, active, figures
        self.jsonl = workdir / "metrics.jsonl"
        self.csv = workdir / "metrics.csv"
        self.bar = None
        self.tensorboard = None
        if active:
            self._truncate_after(start_step)
            if run_cfg.log.tensorboard:
                self.tensorboard = open_tensorboard(workdir / "tensorboard", start_step)
            if run_cfg.log.progress:
                self.bar = tqdm(total=run_cfg.train.steps, initial=start_step, unit="step",
                                dynamic_ncols=True, desc="train")

    def _truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resume starts from)."""
        if not self.jsonl.exists():
            return
        keep = [line for line in self.jsonl.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.jsonl.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.active:
            with self.jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps(mlib.ordered(record), ensure_ascii=False) + "\n")
            if self.tensorboard is not None:
                split = record.get("split", "train")
                for key, value in record.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) \
                            and key not in ("step", "split"):
                        tag = key if key.startswith(f"{split}/") else f"{split}/{key}"
                        self.tensorboard.add_scalar(tag, value, record["step"])

    def records(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        return [json.loads(x) for x in self.jsonl.read_text(encoding="utf-8").splitlines() if x]

    def print(self, text: str) -> None:
        if not self.active or not text:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def progress(self, step: int, metrics: dict, tokens_per_sec: float) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix(loss=f"{metrics['loss/total']:.3f}", ce=f"{metrics['loss/ce']:.3f}",
                             ppl=f"{metrics['ppl']:.1f}", tok_s=f"{tokens_per_sec:,.0f}",
                             refresh=False)
        self.bar.refresh()

    def write_csv(self) -> Path | None:
        """One row per step, train and eval columns merged (rewritten in full)."""
        if not (self.active and self.cfg.log.csv):
            return None
        rows: dict[int, dict] = {}
        for rec in self.records():
            row = rows.setdefault(rec["step"], {"step": rec["step"]})
            row.update({k: v for k, v in rec.items() if k not in ("split", "step")})
        header: list[str] = []
        for row in rows.values():
            header.extend(k for k in row if k not in header)
        header = list(mlib.ordered(dict.fromkeys(header)))
        with self.csv.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            for step in sorted(rows):
                writer.writerow(rows[step])
        return self.csv

    def write_curves(self) -> Path | None:
        if not (self.active and self.cfg.log.curves and self.figures is not None):
            return None
        series = []
        for r in self.records():
            if r.get("split") == "train":
                series.append({"step": r["step"], "train_loss": r["loss/ce"],
                               "train_ppl": r["ppl"]})
            elif "eval/ce" in r:
                series.append({"step": r["step"], "eval_loss": r["eval/ce"],
                               "eval_ppl": r["eval/ppl"]})
        if not series:
            return None
        out = self.workdir / "curves.png"
        self.figures.curves(series, out, "gaugeformer: cross-entropy and perplexity")
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
