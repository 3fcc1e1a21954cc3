"""Training on Ray Train: checks before any worker starts, datasets, the trainer, test
metrics and the run folder.

Run folder (``out``)::

    metrics.json          test metrics, best checkpoint, model version, per-epoch history
    epochs/epoch-*.json   validation metrics of every epoch, as they happen
    confusion_matrix.csv  on the test split (and .png)
    checkpoints/          Ray Train's checkpoints (or ``storage_path``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from genreflow import checkpoint as ckpt
from genreflow import storage
from genreflow.config import from_dict
from genreflow.entry import first_line, mark_started
from genreflow.errors import ConfigError, GenreflowError
from genreflow.formats.dataset import (
    MOOD_CLASSES,
    read_dataset_manifest,
)
from genreflow.label import model_seconds_per_track
from genreflow.models import model_class
from genreflow.models.lyrics import LyricsVocab, load_word2vec_text
from genreflow.multilabel import pos_weights
from genreflow.pipelines.train_data import ShardBatches, TableShard, setup_data
from genreflow.ray_compat import health_check_interval
from genreflow.runtime import (
    cluster_gpus,
    init_ray,
    read_parquet,
    wait_for_resources,
    wants_gpus,
    withdraw_resource_request,
)
from genreflow.tokens import TokenSpec, check_same_spec
from genreflow.train import (
    RUN_PARTS,
    Tags,
    TrainConfig,
    TrainingRecipe,
    balanced_class_weights,
    build_for_training,
    evaluate,
    fold_parts,
    predict,
    tensor_batch,
    to_device,
)

log = logging.getLogger(__name__)

PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # Ray Train V2's, default on

# A testing aid, not a setting: set in the driver's environment, the first worker dies
# (like a preempted node) after checkpointing this epoch, once; the run must recover.
CRASH_AFTER_EPOCH_ENV = "GENREFLOW_TESTING_CRASH_AFTER_EPOCH"


@dataclasses.dataclass
class TrainResult:
    out: str
    metrics: dict[str, Any]
    seconds: float

    def summary(self) -> str:
        m = self.metrics
        val = m.get("best_val", {})
        test = m.get("test", {})
        text = (
            f"train {m['model']} ({m['preset']}) -> {self.out}: {m['epochs_run']} epochs in "
            f"{self.seconds:.0f} s"
        )
        if m.get("task", "single") != "multi":
            text += (
                f"; best val accuracy {val.get('val_accuracy', float('nan')):.3f}, "
                f"macro-F1 {val.get('val_macro_f1', float('nan')):.3f}; test accuracy "
                f"{test.get('accuracy', float('nan')):.3f}, "
                f"macro-F1 {test.get('macro_f1', float('nan')):.3f}, "
                f"log-loss {test.get('log_loss', float('nan')):.3f}"
            )
        else:
            text += f"; best val mAP {val.get('val_tag_macro_pr_auc', float('nan')):.3f}"
        if "mood" in test:
            text += f", mood accuracy {test['mood'].get('accuracy', float('nan')):.3f}"
        if "tags" in test:
            tags = test["tags"]
            text += (
                f"; multi-label test macro ROC-AUC {tags.get('macro_roc_auc', float('nan')):.3f}, "
                f"mAP {tags.get('macro_pr_auc', float('nan')):.3f}, macro-F1 at the "
                f"validation thresholds {tags.get('macro_f1', float('nan')):.3f} over "
                f"{tags.get('genres_present', 0)} genres"
            )
        if "cross_validation" in m:
            cv = m["cross_validation"]
            text += (
                f"; {cv['folds']}-fold CV macro-F1 {cv['macro_f1_mean']:.3f} ± "
                f"{cv['macro_f1_std']:.3f}"
            )
        return text + f". Model {m['model_version']}; best checkpoint {m['best_checkpoint']}."


def _check(config: TrainConfig) -> dict[str, Any]:
    """Every check that needs no worker: config, data folder, splits, model."""
    if not config.data:
        raise ConfigError("no data folder given: set data=DIR (or --data DIR)")
    if not config.out:
        raise ConfigError("no run folder given: set out=DIR (or --out DIR)")
    model_class(config.model)
    manifest = read_dataset_manifest(config.data)
    by_split = manifest["counts"]["by_split"]
    for split in ("train", "val"):
        if not by_split.get(split):
            raise ConfigError(
                f"dataset {config.data!r} has no rows in its {split!r} split (splits: {by_split}); "
                "re-ingest with split_fractions that give every split tracks"
            )
    genres = manifest["labels"]["genre"]
    spec = TokenSpec.from_dict(manifest["token_spec"])
    tags = manifest["labels"].get("tags", [])
    if config.task != "single" and len(tags) < 2:
        raise ConfigError(
            f"task={config.task}: dataset {config.data!r} has no multi-label genres (its "
            "catalog had no FMA genres_all or manifest genres column); use task=single"
        )
    if config.task != "multi" and len(genres) < 2:
        raise ConfigError(
            f"task={config.task}: dataset {config.data!r} has {len(genres)} single-label "
            "genres; use task=multi where tracks carry genre lists"
        )
    build_for_training(config, spec, len(genres), 2, len(tags))  # bad presets fail here
    if config.lyrics_vectors and not storage.exists(config.lyrics_vectors):
        raise ConfigError(f"lyrics_vectors {config.lyrics_vectors!r} does not exist")
    if config.resume:
        drop_cut_snapshot(config)
        latest, state = _newest_loadable_checkpoint(config)
        if latest is not None and state is not None:
            check_same_spec(
                TokenSpec.from_dict(state["token_spec"]),
                spec,
                a_name=f"checkpoint {latest!r}",
                b_name=f"dataset {config.data!r}",
            )
    elif storage.exists(storage.join(config.out, "metrics.json")) or _latest_checkpoint(config):
        raise ConfigError(
            f"run folder {config.out!r} already holds a run; pass --resume (resume=true) to "
            "continue it, or choose a new --out"
        )
    return manifest


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's list of a run's checkpoints


def drop_cut_snapshot(config: TrainConfig) -> bool:
    """Remove the run's checkpoint list when a kill cut it mid-write (Ray Train 2.60
    rewrites it in place, not atomically), so a resume starts over instead of failing on
    it; whether it was removed."""
    snapshot = storage.join(_storage_path(config), "run", SNAPSHOT_FILE)
    if not storage.exists(snapshot):
        return False
    try:
        json.loads(storage.read_bytes(snapshot))
        return False
    except (ValueError, UnicodeDecodeError):
        log.warning(
            "the run's checkpoint list %s was cut short by an interruption; the run "
            "restarts from its first epoch",
            snapshot,
        )
        storage.delete(snapshot)
        return True


def _storage_path(config: TrainConfig) -> str:
    return config.storage_path or storage.join(config.out, "checkpoints")


def _newest_loadable_checkpoint(
    config: TrainConfig,
) -> tuple[str | None, dict[str, Any] | None]:
    """The newest checkpoint folder that loads, and its state. A folder a kill cut short
    while Ray copied it in is skipped (Ray Train never registered it either)."""
    for folder in reversed(_checkpoint_folders(config)):
        try:
            return folder, ckpt.load(folder)
        except ConfigError as exc:
            log.warning("skipping checkpoint %s, cut short by an interruption? %s", folder, exc)
    return None, None


def _latest_checkpoint(config: TrainConfig) -> str | None:
    folders = _checkpoint_folders(config)
    return folders[-1] if folders else None


def _checkpoint_folders(config: TrainConfig) -> list[str]:
    """The run's checkpoint folders, oldest first (Ray names them by time)."""
    root = storage.join(_storage_path(config), "run")
    fs, path = storage.resolve(root)
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
    )
    return [storage.join(root, name) for name in names]


def build_lyrics_vocab(config: TrainConfig) -> LyricsVocab:
    """The lyrics vocabulary of the training split: a Ray Data pass counting words per
    block, summed on the driver (a word list, never the lyrics themselves)."""
    from ray.data.expressions import col

    from genreflow.models.lyrics import sentences

    fs, path = storage.resolve(storage.join(config.data, "shards"))
    ds = read_parquet(path, filesystem=fs, columns=["split", "lyrics"])
    ds = ds.filter(expr=col("split") == "train")

    def count(batch: pd.DataFrame) -> pd.DataFrame:
        counts: Counter[str] = Counter()
        for text in batch["lyrics"].dropna():
            for sentence in sentences(str(text)):
                counts.update(sentence)
        return pd.DataFrame({"word": list(counts), "n": list(counts.values())})

    totals: Counter[str] = Counter()
    for part in ds.map_batches(count, batch_format="pandas").iter_batches(
        batch_format="pandas", batch_size=None
    ):
        totals.update(dict(zip(part["word"], part["n"], strict=True)))
    return LyricsVocab.from_counts(
        totals, min_count=config.lyrics_min_count, max_size=config.lyrics_max_vocab
    )


def word_vectors(
    config: TrainConfig, manifest: dict[str, Any], vocab: LyricsVocab | None
) -> np.ndarray | None:
    """The lyrics model's starting word embeddings from ``config.lyrics_vectors`` (None:
    random), read here on the driver and shipped to the workers with the run's data."""
    if not config.lyrics_vectors or vocab is None:
        return None
    model = build_for_training(
        config, TokenSpec.from_dict(manifest["token_spec"]), len(manifest["labels"]["genre"]),
        len(vocab),
    )  # fmt: skip
    dim = int(model.hp["embed_dim"])
    try:
        table, found = load_word2vec_text(config.lyrics_vectors, vocab, dim=dim)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"lyrics_vectors {config.lyrics_vectors!r}: {exc}") from exc
    log.info(
        "lyrics vectors: %d of %d vocabulary words found in %s",
        found, len(vocab) - 2, config.lyrics_vectors,
    )  # fmt: skip
    return table


def _fit(
    config: TrainConfig,
    manifest: dict[str, Any],
    vocab: LyricsVocab | None,
    datasets: dict[str, Any],
    *,
    name: str,
    use_gpu: bool,
    testing_crash: bool = True,
) -> Any:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    genres = manifest["labels"]["genre"]
    tags = manifest["labels"].get("tags", []) if config.task != "single" else []
    worker_env = {}
    if config.resources.worker_niceness is not None:
        worker_env["RAY_worker_niceness"] = str(config.resources.worker_niceness)
    if config.deterministic and use_gpu:  # cuBLAS's condition for deterministic kernels
        worker_env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    if testing_crash and os.environ.get(CRASH_AFTER_EPOCH_ENV):
        worker_env[CRASH_AFTER_EPOCH_ENV] = os.environ[CRASH_AFTER_EPOCH_ENV]
    counts = manifest["counts"]["by_split_genre"].get("train", {})
    # small splits go to the workers whole through the object store, the rest as Ray
    # datasets (each costs a split coordinator and Ray Data's actors)
    tables = {name: ray.put(d) for name, d in datasets.items() if isinstance(d, pa.Table)}
    if not (config.resources.address or os.environ.get("RAY_ADDRESS")):
        # a local Ray has no node to drain: Ray Train's preemption watcher (an actor
        # process a run) has nothing to watch
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    loop_config = {
        "tables": tables,
        "config": dataclasses.asdict(config),
        "token_spec": manifest["token_spec"],
        "genres": genres,
        "moods": list(MOOD_CLASSES),
        "lyrics_vocab": list(vocab.words) if vocab else None,
        "word_vectors": word_vectors(config, manifest, vocab),
        "class_weights": balanced_class_weights(counts, genres)
        if config.class_weighting == "balanced" and config.task != "multi"
        else None,
        "tags": tags,
        "tag_parents": manifest["labels"].get("tag_parents", {}) if tags else {},
        "tag_pos_weight": _tag_pos_weight(config, manifest, tags),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.resources.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={
                "CPU": config.resources.cpus_per_worker,
                **({"GPU": 1} if use_gpu else {}),
            },
        ),
        # ray.train exports Train V2's RunConfig when V2 is on (the default); mypy sees V1's
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=_storage_path(config),
            failure_config=ray.train.FailureConfig(max_failures=config.resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                checkpoint_score_attribute="val_score", checkpoint_score_order="max"
            ),
            worker_runtime_env={"env_vars": worker_env} if worker_env else {},
        ),
        datasets={name: d for name, d in datasets.items() if name not in tables},
    )
    try:
        with (
            health_check_interval(config.resources.health_check_s),
            epoch_progress(config, name=name),
        ):
            return trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise GenreflowError(
            f"training failed ({config.resources.max_failures} recovery attempt(s) allowed): "
            f"{failure_cause(exc)}\n{exc}"
        ) from exc


def _tag_pos_weight(
    config: TrainConfig, manifest: dict[str, Any], tags: list[str]
) -> list[float] | None:
    """Each multi-label genre's positive weight from the training split's counts."""
    if not tags:
        return None
    counts = manifest["counts"].get("by_split_tag", {}).get("train", {})
    total = manifest["counts"].get("tagged_by_split", {}).get("train", 0)
    return [
        float(w)
        for w in pos_weights([counts.get(t, 0) for t in tags], total, cap=config.tag_pos_weight_max)
    ]


def failure_cause(exc: BaseException) -> str:
    """One line naming what a failed Ray Train run died of: the first worker's own
    exception (unwrapped from Ray's task error), else the controller's, else ``exc``."""
    failures: dict[int, BaseException] = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        cause = getattr(failure, "cause", None) or failure
        return f"worker {rank}: {type(cause).__name__}: {first_line(str(cause))}"
    controller = getattr(exc, "controller_failure", None)
    if controller is not None:
        return f"{type(controller).__name__}: {first_line(str(controller))}"
    return first_line(str(exc))


@contextlib.contextmanager
def epoch_progress(config: TrainConfig, *, name: str, every_s: float = 2.0) -> Iterator[None]:
    """Log a line for each epoch the workers finish while the block runs: the driver
    reads the epoch files they write (``epochs/epoch-NNNN.json``), so the progress of a
    run reaches the console without Ray's worker logs."""
    folder = storage.join(config.out, "epochs")
    seen = set(storage.list_files(folder, suffix=".json"))  # a resumed run's earlier epochs
    done = threading.Event()

    def poll() -> None:
        finished = False
        while not finished:  # once more after the fit ends: its last epochs too
            finished = done.wait(every_s)
            try:
                for uri in storage.list_files(folder, suffix=".json"):
                    if uri in seen:
                        continue
                    seen.add(uri)
                    m = storage.read_json(uri)
                    log.info(
                        "%s: epoch %d/%d, train loss %.3f, val accuracy %.3f, macro-F1 %.3f",
                        name, int(m["epoch"]) + 1, config.epochs, m.get("train_loss", math.nan),
                        m.get("val_accuracy", math.nan), m.get("val_macro_f1", math.nan),
                    )  # fmt: skip
            except (GenreflowError, OSError, ValueError, KeyError) as exc:  # progress only
                log.debug("epoch progress: %s", exc)

    thread = threading.Thread(target=poll, name="genreflow-epoch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _check_resources(config: TrainConfig, *, use_gpu: bool) -> bool:
    """Wait for the workers' resources: at once on a local Ray (which cannot grow), up
    to ``resource_wait_s`` on a cluster, whose autoscaler is asked for them; whether it
    was asked."""
    bundle = {
        "CPU": config.resources.cpus_per_worker,
        **({"GPU": 1.0} if use_gpu else {}),
    }
    return wait_for_resources(
        [bundle] * config.resources.num_workers,
        what=f"training ({config.resources.num_workers} worker(s))",
        timeout_s=config.resources.resource_wait_s,
        local=not (config.resources.address or os.environ.get("RAY_ADDRESS")),
    )


def _recorded(config: TrainConfig) -> dict[str, Any]:
    """The config as metrics.json keeps it: everything but where it ran."""
    recorded = dataclasses.asdict(config)
    recorded["resources"].pop("address", None)
    return recorded


def run_train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.data``; see the module docstring for outputs."""
    start = time.perf_counter()
    manifest = _check(config)
    init_ray(config.resources.address, num_cpus=config.resources.num_cpus)
    present, possible = cluster_gpus()
    use_gpu = wants_gpus(
        config.resources.use_gpu, present=present, possible=possible, what="training"
    )  # resolved here once and passed on; the config stays as the user wrote it
    log.info(
        "train plan: %d worker(s), %s CPU(s) each%s",
        config.resources.num_workers,
        config.resources.cpus_per_worker,
        ", one GPU each" if use_gpu else ", no GPU",
    )
    asked = _check_resources(config, use_gpu=use_gpu)
    mark_started()
    try:
        return _run(config, manifest, start, use_gpu=use_gpu)
    finally:
        if asked:  # the cluster may let the workers' nodes go
            withdraw_resource_request()


def _run(
    config: TrainConfig, manifest: dict[str, Any], start: float, *, use_gpu: bool
) -> TrainResult:
    """``run_train`` once its checks passed and its workers' resources are there."""
    vocab = build_lyrics_vocab(config) if model_class(config.model).uses_lyrics else None
    metrics: dict[str, Any] = {}
    if config.folds:
        metrics["cross_validation"] = _cross_validate(config, manifest, vocab, use_gpu=use_gpu)
    datasets = setup_data(config, manifest, vocab, RUN_PARTS)
    test_ds = datasets.pop("test", None)
    result = _fit(config, manifest, vocab, datasets, name="run", use_gpu=use_gpu)
    if result.error is not None:
        raise GenreflowError(f"training failed: {result.error}")
    best = result.get_best_checkpoint(metric="val_score", mode="max") or result.checkpoint
    if best is None:
        raise GenreflowError("training reported no checkpoint")
    best_path = _checkpoint_uri(config, best.path)
    loaded = ckpt.load_model(best_path)
    history = _history(config)
    state = ckpt.load(best_path)
    test_metrics: dict[str, Any] = {"count": 0}
    if test_ds is not None and manifest["counts"]["by_split"].get("test"):
        test_metrics = evaluate(
            score_split(
                test_ds,
                best_path,
                config,
                use_gpu=use_gpu,
                tracks=int(manifest["counts"]["by_split"]["test"]),
                loaded=loaded,
            ),
            loaded.genres,
            loaded.moods,
            task=loaded.task,
            tags=Tags(loaded.tags, loaded.tag_parents) if loaded.tags else None,
            thresholds=np.asarray(loaded.tag_thresholds) if loaded.tag_thresholds else None,
        )
    metrics.update(
        {
            "model": config.model,
            "preset": config.preset,
            "model_version": loaded.version,
            "best_checkpoint": best_path,
            "best_epoch": int(state["epoch"]),
            "best_val": state.get("val_metrics", {}),
            "epochs_run": len(history),
            "history": history,
            "test": test_metrics,
            "task": config.task,
            "device": "cuda" if use_gpu else "cpu",  # where the workers trained
            "labels": {
                "genre": manifest["labels"]["genre"],
                "mood": loaded.moods,
                "tags": loaded.tags,
                "tag_parents": loaded.tag_parents,
            },
            "token_spec": manifest["token_spec"],
            "config": _recorded(config),
        }
    )
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    _write_outputs(config.out, metrics)
    return TrainResult(out=config.out, metrics=metrics, seconds=metrics["seconds"])


class SplitScorer:
    """Ray Data actor: a checkpoint's predictions (:func:`genreflow.train.predict`'s
    columns) for batches of a prepared split."""

    def __init__(self, checkpoint: str, *, threads: int, device: str) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = ckpt.load_model(checkpoint).model.to(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = to_device(tensor_batch(batch, float_tokens=True), self.device)
        return predict(self.model, [tensors])


def score_split(
    ds: Any,
    checkpoint: str,
    config: TrainConfig,
    *,
    use_gpu: bool,
    tracks: int,
    loaded: ckpt.LoadedModel | None = None,
) -> dict[str, np.ndarray]:
    """The predictions of ``checkpoint`` over the prepared split ``ds`` of ``tracks``
    tracks, made where its rows are by an actor pool shaped like the training workers
    (their CPUs, a GPU each where they trained on GPUs); the driver gathers the
    per-track probabilities only. A split the model scores in seconds
    (:func:`_scores_here`) is scored in this process instead: the pool's start alone
    costs more. ``loaded``: ``checkpoint`` already loaded here, if it is."""
    import ray

    if not use_gpu and config.resources.score_local_s > 0:
        loaded = loaded or ckpt.load_model(checkpoint)
        if _scores_here(loaded, config, tracks):
            cpu = torch.device("cpu")
            batches = (
                TableShard(ds, 0, 1).batches(config.batch_size, seed=None)
                if isinstance(ds, pa.Table)
                else ds.iter_batches(batch_size=config.batch_size, batch_format="numpy")
            )
            tensors = (to_device(tensor_batch(b, float_tokens=True), cpu) for b in batches)
            return predict(loaded.model, tensors)
    if isinstance(ds, pa.Table):  # a small split prepared on the driver
        ds = ray.data.from_arrow(ds)
    scored = ds.map_batches(
        SplitScorer,
        fn_constructor_kwargs={
            "checkpoint": checkpoint,
            "threads": max(1, int(config.resources.cpus_per_worker)),
            "device": "cuda" if use_gpu else "cpu",
        },
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.resources.num_workers),
        num_cpus=config.resources.cpus_per_worker,
        num_gpus=1 if use_gpu else None,
    )
    parts = list(scored.iter_batches(batch_size=None, batch_format="numpy"))
    if not parts:
        return predict(torch.nn.Identity(), [])
    return {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}


def _scores_here(loaded: ckpt.LoadedModel, config: TrainConfig, tracks: int) -> bool:
    """Whether this process scores ``tracks`` tracks in under ``resources.score_local_s``
    seconds, at the speed the model shows on one CPU thread
    (:func:`genreflow.label.model_seconds_per_track`: milliseconds a track for the tiny
    models, about a second for the musicnn front end)."""
    try:
        seconds = model_seconds_per_track(loaded.model, loaded.spec)
    except (RuntimeError, TypeError, ValueError):  # a model that needs more than tokens
        return False
    return seconds * tracks < config.resources.score_local_s


def _checkpoint_uri(config: TrainConfig, path: str) -> str:
    """Ray reports remote checkpoint paths without their scheme; give it back."""
    root = _storage_path(config)
    if storage.is_remote(root) and "://" not in path:
        return f"{root.split('://', 1)[0]}://{path}"
    return path


def _history(config: TrainConfig) -> list[dict[str, Any]]:
    files = storage.list_files(storage.join(config.out, "epochs"), suffix=".json")
    return [storage.read_json(f) for f in files]


def _cross_validate(
    config: TrainConfig, manifest: dict[str, Any], vocab: LyricsVocab | None, *, use_gpu: bool
) -> dict[str, Any]:
    """k folds over the training split, artist-disjoint; each fold validates on itself
    and trains on the others. Returns the folds' best validation macro-F1, mean and std."""
    scores = []
    for k in range(config.folds):
        datasets = setup_data(config, manifest, vocab, fold_parts(k, config.folds))
        fold_config = dataclasses.replace(
            config,
            out=storage.join(config.out, f"fold-{k}"),
            storage_path=storage.join(_storage_path(config), f"fold-{k}"),
            resume=False,
        )
        result = _fit(
            fold_config, manifest, vocab, datasets, name="run", use_gpu=use_gpu, testing_crash=False
        )
        if result.error is not None:
            raise GenreflowError(f"cross-validation fold {k} failed: {result.error}")
        history = _history(fold_config)
        scores.append(max((h["val_macro_f1"] for h in history), default=float("nan")))
        log.info("fold %d/%d: best val macro-F1 %.3f", k + 1, config.folds, scores[-1])
    return {
        "folds": config.folds,
        "macro_f1": scores,
        "macro_f1_mean": float(np.mean(scores)),
        "macro_f1_std": float(np.std(scores)),
    }


def _write_outputs(out: str, metrics: dict[str, Any]) -> None:
    genres = metrics["labels"]["genre"]
    matrix = metrics["test"].get("confusion_matrix")
    if matrix is not None:
        frame = pd.DataFrame(matrix, index=pd.Index(genres, name="true"), columns=genres)
        storage.write_bytes_atomic(
            storage.join(out, "confusion_matrix.csv"), frame.to_csv().encode()
        )
        storage.write_bytes_atomic(
            storage.join(out, "confusion_matrix.png"),
            confusion_png(np.array(matrix), genres, title=f"{metrics['model']} — test split"),
        )
    storage.write_json_atomic(storage.join(out, "metrics.json"), metrics)


CONFUSION_NUMBERS_UP_TO = 30  # genres; above it the picture shows colours only
MAX_CONFUSION_INCHES = 24.0


def confusion_png(matrix: np.ndarray, labels: list[str], *, title: str) -> bytes:
    """A confusion matrix picture (rows: true genre, columns: predicted) as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = min(MAX_CONFUSION_INCHES, max(4.0, 0.6 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    font = max(4.0, min(10.0, 400.0 / max(n, 1)))
    many = n > CONFUSION_NUMBERS_UP_TO
    ax.set_xticks(
        range(n), labels, rotation=90 if many else 45, ha="center" if many else "right",
        fontsize=font,
    )  # fmt: skip
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    # a number in every cell only while cells are large enough to read it (161 genres
    # would be 26,000 numbers): the CSV beside the picture has them all
    for i in range(matrix.shape[0] if n <= CONFUSION_NUMBERS_UP_TO else 0):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _shard(loop_config: dict[str, Any], name: str) -> Any:
    """This worker's rows of a run part: its share of a small split's table, or its
    stream of a Ray dataset's rows."""
    import ray
    import ray.train

    if name in loop_config["tables"]:
        context = ray.train.get_context()
        table = ray.get(loop_config["tables"][name])
        return TableShard(table, context.get_world_rank(), context.get_world_size())
    return ray.train.get_dataset_shard(name)


def _worker_recipe(
    config: TrainConfig, loop_config: dict[str, Any], device: torch.device
) -> TrainingRecipe:
    """The training recipe of a worker, from the run's plain data (``loop_config``)."""
    return TrainingRecipe(
        config,
        TokenSpec.from_dict(loop_config["token_spec"]),
        genres=loop_config["genres"],
        moods=loop_config["moods"],
        words=loop_config.get("lyrics_vocab"),
        class_weights=loop_config.get("class_weights"),
        device=device,
        word_vectors=loop_config.get("word_vectors"),
        tags=Tags(loop_config["tags"], loop_config["tag_parents"])
        if loop_config.get("tags")
        else None,
        tag_pos_weight=loop_config.get("tag_pos_weight"),
    )


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The Ray Train worker function: the training recipe with Ray at its marked points
    (RAY: ...): its dataset shard, model preparation (DDP), resuming from the latest
    checkpoint, and reporting metrics and checkpoints. ``loop_config`` carries the
    run's plain data."""
    import ray.train
    import ray.train.torch

    config = from_dict(TrainConfig, loop_config["config"])
    # Batches of a split held in the object store arrive as read-only views; the step
    # only reads them, so torch's warning about non-writable arrays is noise here.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.set_num_threads(max(1, int(config.resources.cpus_per_worker)))
    rank = ray.train.get_context().get_world_rank()
    crash_after = int(os.environ.get(CRASH_AFTER_EPOCH_ENV) or -1)  # tests only
    device = ray.train.torch.get_device()
    recipe = _worker_recipe(config, loop_config, device)
    resumed = ray.train.get_checkpoint()  # RAY: the latest checkpoint when resuming
    if resumed is not None:
        with resumed.as_directory() as folder:
            recipe.restore(ckpt.load(folder))
    # RAY: device placement and DDP (>1 worker)
    recipe.prepare(
        lambda model: ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs=recipe.ddp_options()
        )
    )
    train_shard = _shard(loop_config, "train")  # RAY: this worker's rows
    val_shard = _shard(loop_config, "val")
    batches = ShardBatches(config, device, rank)
    for epoch in range(recipe.start_epoch, config.epochs):
        trained = recipe.train_epoch(batches(train_shard, shuffle_epoch=epoch), epoch=epoch)
        val = recipe.evaluate(batches(val_shard))
        metrics, stop = recipe.end_epoch(epoch, trained, val)
        if rank == 0:
            storage.write_json_atomic(
                storage.join(config.out, "epochs", f"epoch-{epoch:04d}.json"),
                {**metrics, "val_confusion_matrix": val.get("confusion_matrix")},
            )
            with tempfile.TemporaryDirectory() as folder:
                ckpt.save(folder, recipe.state(epoch, metrics))
                # RAY: report metrics with the checkpoint (rank 0 holds the full model)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)  # RAY: every worker reports each epoch
        if crash_after == epoch and resumed is None and rank == 0:
            ray.train.get_all_reported_checkpoints()  # RAY: wait until the checkpoint is registered
            os._exit(1)  # testing aid: die like a preempted node, once, after checkpointing
        if stop:
            break
