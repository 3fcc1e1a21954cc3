"""Model comparison: every model trained under one protocol, one table of results.

Same dataset (so the same splits), same training settings (epochs, batch size,
optimiser, seed) and the same test split for every model; each trains in its own run
folder with Ray Train. A model that fails to train is a ``failed`` row with its error,
never silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from genreflow import storage
from genreflow.config import path_field
from genreflow.entry import first_line, mark_started
from genreflow.errors import ConfigError
from genreflow.model_registry import model_names
from genreflow.models import model_class
from genreflow.train import TrainConfig, finished_run

log = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "model",
    "status",
    "accuracy",
    "macro_f1",
    "log_loss",
    "mood_accuracy",
    "tag_macro_roc_auc",  # multi-label (task multi|both): macro ROC-AUC, mAP and macro-F1
    "tag_map",  # at the per-genre thresholds chosen on validation
    "tag_macro_f1",
    "cv_macro_f1",
    "train_seconds",
    "parameters",
    "epochs",
    "confusion_matrix",
    "error",
]


@dataclass(frozen=True)
class CompareConfig:
    """Settings of one comparison (``configs/compare.yaml``)."""

    data: str = path_field("input")  # a finished ingest output folder
    out: str = path_field("output")  # comparison.md, comparison.csv, runs/<model>/
    models: list[str] = field(default_factory=model_names)  # every registered model
    folds: int = 0  # k-fold cross-validation per model over the training split; 0: off
    train: TrainConfig = field(default_factory=TrainConfig)  # the shared protocol

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models is empty: name at least one model")
        for name in self.models:
            model_class(name)  # unknown names fail before anything trains
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"models lists a model twice: {self.models}")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(f"folds must be 0 (off) or >= 2, got {self.folds}")


@dataclass
class CompareResult:
    out: str
    rows: list[dict[str, Any]]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(r["status"] != "ok" for r in self.rows)

    def summary(self) -> str:
        ok = [r for r in self.rows if r["status"] == "ok"]
        key = "macro_f1" if any(r["macro_f1"] is not None for r in ok) else "tag_map"
        best = max(ok, key=lambda r: r[key] if r[key] is not None else -1.0, default=None)
        text = (
            f"compare -> {self.files.get('markdown', self.out)}: {len(ok)} of {len(self.rows)} "
            f"models trained in {self.seconds:.0f} s"
        )
        if best is not None and best[key] is not None:
            what = "macro-F1" if key == "macro_f1" else "multi-label mAP"
            text += f"; best test {what} {best[key]:.3f} ({best['model']})"
        failed = [r["model"] for r in self.rows if r["status"] != "ok"]
        if failed:
            text += f"; FAILED: {', '.join(failed)}"
        return text + "."


def _train(config: TrainConfig) -> Any:
    """One model's run (a seam so tests can make a model fail)."""
    from genreflow.pipelines.train import run_train

    return run_train(config)


def parameter_count(checkpoint: str) -> int:
    from genreflow.checkpoint import load_model

    model = load_model(checkpoint).model
    return int(sum(p.numel() for p in model.parameters()))


def run_compare(config: CompareConfig) -> CompareResult:
    """Train every model of ``config.models`` on ``config.data``; write the table.

    Rerun into the same ``out``, a comparison keeps the models that finished, continues
    an interrupted one from its last checkpoint and trains the rest.
    """
    start = time.perf_counter()
    for key in ("data", "out"):
        if not getattr(config, key):
            raise ConfigError(f"no {key} given: set {key}=... (or --{key} ...)")
    plans = []
    for name in config.models:
        run = storage.join(config.out, "runs", name)
        train_config = dataclasses.replace(
            config.train, data=config.data, out=run, model=name, folds=config.folds, resume=True
        )
        plans.append((name, run, train_config, finished_run(run, train_config)))
    mark_started()
    rows: list[dict[str, Any]] = []
    for name, run, train_config, metrics in plans:
        row: dict[str, Any] = {c: None for c in TABLE_COLUMNS} | {"model": name}
        t0 = time.perf_counter()
        if metrics is not None:
            log.info("compare: %s finished earlier in %s; kept", name, run)
        else:
            log.info("compare: training %s into %s", name, run)
            try:
                metrics = _train(train_config).metrics
            except Exception as exc:  # a failed model is a row of the table, not a lost table
                log.error("compare: %s failed: %s", name, first_line(str(exc)))
                row |= {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]}
                row["train_seconds"] = round(time.perf_counter() - t0, 1)
                rows.append(row)
                continue
        test = metrics.get("test", {})
        cv = metrics.get("cross_validation")
        row |= {
            "status": "ok",
            "accuracy": test.get("accuracy"),
            "macro_f1": test.get("macro_f1"),
            "log_loss": test.get("log_loss"),
            "mood_accuracy": (test.get("mood") or {}).get("accuracy"),
            "tag_macro_roc_auc": (test.get("tags") or {}).get("macro_roc_auc"),
            "tag_map": (test.get("tags") or {}).get("macro_pr_auc"),
            "tag_macro_f1": (test.get("tags") or {}).get("macro_f1"),
            "cv_macro_f1": (
                f"{cv['macro_f1_mean']:.3f} ± {cv['macro_f1_std']:.3f}" if cv else None
            ),
            "train_seconds": metrics.get("seconds"),
            "parameters": parameter_count(metrics["best_checkpoint"]),
            "epochs": metrics.get("epochs_run"),
            "confusion_matrix": (
                storage.join("runs", name, "confusion_matrix.png")
                if test.get("confusion_matrix") is not None
                else None
            ),
        }
        rows.append(row)
    files = write_table(rows, config)
    return CompareResult(
        out=config.out, rows=rows, seconds=time.perf_counter() - start, files=files
    )


def _cell(value: Any, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "train_seconds" else f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_table(rows: list[dict[str, Any]], config: CompareConfig) -> dict[str, str]:
    """``comparison.csv`` and ``comparison.md`` (with the shared protocol) in ``config.out``."""
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for column in ("parameters", "epochs"):  # integers, empty where a model failed
        frame[column] = frame[column].astype("Int64")
    csv = storage.join(config.out, "comparison.csv")
    storage.write_bytes_atomic(csv, frame.to_csv(index=False).encode())
    t = config.train
    lines = [
        "# Model comparison",
        "",
        f"Data `{config.data}`; the same splits, test split and protocol for every model: "
        f"preset `{t.preset}`, {t.epochs} epochs, batch {t.batch_size}, {t.optimizer} "
        f"lr {t.lr:g}, weight decay {t.weight_decay:g}, class weighting {t.class_weighting}, "
        f"seed {t.seed}, task {t.task}"
        + (f", {config.folds}-fold CV on the training split" if config.folds else "")
        + ".",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "| " + " | ".join("---" for _ in TABLE_COLUMNS) + " |",
    ]
    lines += ["| " + " | ".join(_cell(r[c], c) for c in TABLE_COLUMNS) + " |" for r in rows]
    markdown = storage.join(config.out, "comparison.md")
    storage.write_bytes_atomic(markdown, ("\n".join(lines) + "\n").encode())
    return {"csv": csv, "markdown": markdown}


def table_text(result: CompareResult) -> str:
    """The comparison table (its Markdown file), as ``genreflow compare`` prints it."""
    return storage.read_bytes(result.files["markdown"]).decode("utf-8")
