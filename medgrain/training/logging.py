"""Run logging: a JSONL file (the source of truth for curves and the report), TensorBoard, and a
rich progress bar with the loss, throughput and ETA. Only rank 0 logs. Messages (the losses when
there is no progress bar, warnings, the skip summary) go through ``logging``; the command line shows
them (``medgrain.console``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunLogger:
    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True, progress: bool = True,
                 total_steps: int = 0, start_step: int = 0):
        self.enabled = enabled
        self.metrics_path = Path(out) / "metrics.jsonl"
        self._tb = None
        self._progress = None
        self._task = None
        self._t0 = time.time()
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
            except ImportError:  # tensorboard is a dependency; a broken install should not stop training
                self.warn("tensorboard is not importable; logging to metrics.jsonl only")
        from medgrain.console import STDERR

        if progress and STDERR.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]pretrain[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.0f} samples/s"),
                TimeElapsedColumn(), TimeRemainingColumn(),
                transient=False, console=STDERR,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, loss=float("nan"),
                                                 epoch=0, rate=0.0)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {**row, "time": round(time.time() - self._t0, 3)}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            split = row.get("split", "train")
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch", "time"):
                    self._tb.add_scalar(f"{split}/{k}", v, row.get("step", 0))
        split = row.get("split")
        if self._progress is None and split == "valid":
            log.info("[valid] step %d loss %.4f", row["step"], row["loss"])
        elif self._progress is None and split == "train":
            log.info("[train] step %d loss %.4f %.1f samples/s", row["step"], row.get("loss", float("nan")),
                     row.get("samples_per_s", 0))

    def advance(self, step: int, fields: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, **fields)

    def warn(self, message: str) -> None:
        """Log a warning and keep it in metrics.jsonl, where the report finds it."""
        if self.enabled:
            log.warning(message)
            with self.metrics_path.open("a") as f:
                f.write(json.dumps({"split": "warning", "message": message}) + "\n")

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if summary:
            self.log({"split": "summary", **summary})
            if summary.get("skipped_records") or summary.get("skipped_steps"):
                equalised, empty = summary.get("equalised_records", 0), summary.get("empty_batches", 0)
                log.warning(f"skipped: {summary.get('skipped_records', 0)} record(s) with bad input, "
                            f"{summary.get('skipped_steps', 0)} step(s) with a non-finite loss or gradient"
                            + (f", {equalised} good record(s) left out to keep the ranks' batches equal"
                               if equalised else "")
                            + (f", {empty} micro-batch(es) with no record left, stepped over" if empty else ""))
