"""The stage registry: each stage's name, config class, runner and command-line flags,
in one table that ``genreflow <stage>``, ``jobs/<stage>.py`` and ``genreflow demo`` all
go through. Modules are imported when a stage runs, so listing the stages (``--help``)
imports neither torch nor Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from genreflow.config import load_config
from genreflow.model_registry import model_names


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets a config key (``--out`` sets ``out``)."""

    name: str
    help: str
    key: str = ""  # config key; "" derives it from the name (--track-id -> track_id)
    kind: Callable[[str], Any] | None = None  # converts the flag's text (None: as text)
    switch: bool = False  # a flag without a value that sets the key to true

    @property
    def dest(self) -> str:
        return self.key or self.name.lstrip("-").replace("-", "_")


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


@dataclass(frozen=True)
class Stage:
    """One stage: what ``genreflow <name>`` and ``jobs/<script>`` run."""

    name: str
    help: str
    config: str  # "module:Class", the stage's typed config
    runner: str  # "module:function", config -> a result with .summary() (and .failed)
    script: str  # its job script in jobs/
    flags: tuple[Flag, ...] = ()
    report: str = ""  # "module:function", result -> text printed before the summary
    _loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _load(self, ref: str) -> Any:
        if ref not in self._loaded:
            module, _, name = ref.partition(":")
            self._loaded[ref] = getattr(importlib.import_module(module), name)
        return self._loaded[ref]

    @property
    def config_class(self) -> type[Any]:
        cls: type[Any] = self._load(self.config)
        return cls

    def load_config(
        self,
        path: str | None = None,
        overrides: Sequence[str] = (),
        values: Mapping[str, Any] | None = None,
    ) -> Any:
        """The stage's config from a YAML file, flag values, then ``key=value`` overrides.

        Raises:
            ConfigError: an unknown key or a value of the wrong type.
        """
        return load_config(self.config_class, path, overrides, **dict(values or {}))

    def run(self, config: Any) -> Any:
        """Run the stage; its result (``.summary()``, ``.failed`` where it can fail)."""
        return self._load(self.runner)(config)

    def execute(
        self,
        path: str | None,
        overrides: Sequence[str] = (),
        values: Mapping[str, Any] | None = None,
        *,
        out: Callable[[str], None] = print,
    ) -> int:
        """Load the config, run, print the report and summary; the exit code (0 done, 1
        the stage ran and failed; errors raise, see :mod:`genreflow.entry`)."""
        result = self.run(self.load_config(path, overrides, values))
        if self.report:
            out(self._load(self.report)(result))
        out(result.summary())
        return 1 if getattr(result, "failed", False) else 0


OUT = Flag("--out", "output folder (local or s3://)")
DATA = Flag("--data", "a finished ingest output folder")
LABELS = Flag("--labels", "labels folder (genreflow label --out)")

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "ingest",
            "catalog -> Parquet token shards (Ray Data)",
            "genreflow.ingest:IngestConfig",
            "genreflow.pipelines.ingest:run_ingest",
            "jobs/ingest.py",
            (Flag("--catalog", "manifest .csv/.parquet, FMA metadata folder or genre tree"), OUT),
        ),
        Stage(
            "train",
            "Parquet token shards -> a trained model (Ray Train)",
            "genreflow.train:TrainConfig",
            "genreflow.pipelines.train:run_train",
            "jobs/train.py",
            (
                DATA,
                Flag("--out", "run folder (local or s3://)"),
                Flag("--model", " | ".join(model_names())),
                Flag("--resume", "continue the run in --out", switch=True),
            ),
        ),
        Stage(
            "label",
            "catalog or shards + checkpoint -> labels (Ray Data)",
            "genreflow.label:LabelConfig",
            "genreflow.pipelines.label:run_label",
            "jobs/label.py",
            (
                Flag("--checkpoint", "a training run folder, or one checkpoint folder"),
                Flag("--input", "ingest output folder, or a catalog"),
                Flag("--out", "labels folder (local or s3://)"),
            ),
        ),
        Stage(
            "index",
            "labels -> a tuned FAISS index + neighbours table",
            "genreflow.index:IndexConfig",
            "genreflow.pipelines.index:run_index",
            "jobs/build_index.py",
            (LABELS, Flag("--out", "index folder (local or s3://)")),
        ),
        Stage(
            "analyze",
            "labels -> genre analysis report (HTML)",
            "genreflow.analysis:AnalyzeConfig",
            "genreflow.pipelines.analyze:run_analyze",
            "jobs/analyze.py",
            (LABELS, Flag("--out", "report folder")),
        ),
        Stage(
            "compare",
            "train several models under one protocol, one table",
            "genreflow.pipelines.compare:CompareConfig",
            "genreflow.pipelines.compare:run_compare",
            "jobs/compare.py",
            (
                DATA,
                Flag("--out", "comparison folder"),
                Flag("--models", "comma-separated model names (default: every one)", kind=_models),
                Flag("--folds", "k-fold CV per model", kind=int),
            ),
            report="genreflow.pipelines.compare:table_text",
        ),
    )
}
