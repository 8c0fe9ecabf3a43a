"""Where each finished epoch's record goes: the console, ``runs/<cell>/train_log.jsonl`` and the cell's MLflow run."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dawsol.atomic import atomic_write_text
from dawsol.tracking import CellRun

log = logging.getLogger(__name__)

Record = dict[str, Any]


class ConsoleSink:
    """One log line per epoch: rate, losses, accuracy, throughput and the headline val metrics."""

    def __init__(self, cell: str, epochs: int) -> None:
        self.cell, self.epochs = cell, epochs

    def __call__(self, record: Record, records: Sequence[Record]) -> None:
        val = record["val"]
        summary = "".join(
            f" val {key} {val[key]:.2f}" for key in ("MaxBoxAccV2", "PxAP") if val and val.get(key) is not None
        )
        log.info(
            "%s epoch %d/%d: lr %.2e loss %.4f (L_c %.4f L_d %.4f L_u %.4f) acc %.1f%% %.0f img/s%s",
            self.cell,
            record["epoch"],
            self.epochs,
            record["lr"],
            record["loss"],
            record["loss_c"],
            record["loss_d"],
            record["loss_u"],
            record["train_acc"],
            record["images_per_s"],
            summary,
        )


class TrainLogSink:
    """``train_log.jsonl``: rewritten atomically from every record, so it always equals the checkpoint's records."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, record: Record, records: Sequence[Record]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in records))


class MLflowSink:
    """The epoch's ``train.*`` metrics and, when it validated, its ``val.*`` metrics, at step = epoch."""

    def __init__(self, run: CellRun) -> None:
        self.run = run

    def __call__(self, record: Record, records: Sequence[Record]) -> None:
        flat = {k: v for k, v in record.items() if k not in ("epoch", "val")}
        self.run.log_metrics(flat, step=record["epoch"], prefix="train.")
        if record["val"]:
            self.run.log_metrics(record["val"], step=record["epoch"], prefix="val.")
