"""The analysis report: one streaming pass over the labels -> genre embeddings, nearest
genres, analogies, PCA pictures, confusion matrix, attention heat-maps, one HTML page."""

from __future__ import annotations

import html
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from genreflow import analysis, faultpoints, storage
from genreflow.analysis import AnalyzeConfig
from genreflow.entry import mark_started
from genreflow.errors import ConfigError, GenreflowError
from genreflow.formats.labels import label_files
from genreflow.index import Reservoir
from genreflow.multilabel import TagTally

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
DATA_FILE = "analysis.json"


@dataclass
class HeatmapTrack:
    track_id: str
    genre: str
    weights: np.ndarray  # [n_tokens]
    moments: list[dict[str, float]]


@dataclass
class Scan:
    """What one pass over the labels gathers (bounded by genres and sample sizes)."""

    genres: analysis.GenreAccumulator = field(default_factory=analysis.GenreAccumulator)
    confusion: analysis.Confusion = field(default_factory=analysis.Confusion)
    heatmaps: dict[str, list[HeatmapTrack]] = field(default_factory=dict)
    tracks: int = 0
    by_truth: bool = False
    tags: TagTally = field(default_factory=TagTally)  # multi-label models, test split


def scan_labels(files: list[str], *, version: str, config: AnalyzeConfig) -> tuple[Scan, Reservoir]:
    scan = Scan()
    sample = Reservoir(config.sample_tracks, seed=config.seed)
    wanted = [
        "track_id",
        "genre",
        "true_genre",
        "embedding",
        "token_weights",
        "signature_moments",
        "model_version",
        "split",
        "genre_tags",
        "true_genres",
    ]
    for uri in files:
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as handle:
            reader = pq.ParquetFile(handle)
            columns = [c for c in wanted if c in reader.schema_arrow.names]
            for batch in reader.iter_batches(batch_size=config.batch_size, columns=columns):
                rows = batch.to_pydict()
                keep = [i for i, v in enumerate(rows["model_version"]) if v == version]
                if not keep:
                    continue
                predicted = [rows["genre"][i] for i in keep]
                truth = [rows.get("true_genre", [None] * len(rows["genre"]))[i] for i in keep]
                group = [t if t is not None else p for t, p in zip(truth, predicted, strict=True)]
                vectors = np.asarray([rows["embedding"][i] for i in keep], dtype=np.float32)
                scan.genres.add(group, vectors)
                # accuracy is evidence only on tracks the model never trained on
                splits = rows.get("split", [None] * len(rows["genre"]))
                tested = [j for j, i in enumerate(keep) if splits[i] == "test"]
                scan.confusion.add([truth[j] for j in tested], [predicted[j] for j in tested])
                _tally_tags(scan.tags, rows, [keep[j] for j in tested])
                scan.by_truth |= any(t is not None for t in truth)
                sample.add(vectors, np.asarray(group, dtype=object))
                scan.tracks += len(keep)
                for j, i in enumerate(keep):
                    weights = rows.get("token_weights", [None] * len(rows["genre"]))[i]
                    chosen = scan.heatmaps.setdefault(group[j], [])
                    if weights is not None and len(chosen) < config.heatmap_tracks:
                        chosen.append(
                            HeatmapTrack(
                                track_id=str(rows["track_id"][i]),
                                genre=group[j],
                                weights=np.asarray(weights, dtype=np.float32),
                                moments=list(rows["signature_moments"][i] or []),
                            )
                        )
    return scan, sample


def _tally_tags(tally: TagTally, rows: dict[str, list[Any]], tested: list[int]) -> None:
    """Count a multi-label model's tags of test-split tracks against their genre lists."""
    tags, truth = rows.get("genre_tags"), rows.get("true_genres")
    if tags is None or truth is None:
        return
    for i in tested:
        if tags[i] is not None and truth[i]:
            tally.add([t["genre"] for t in tags[i]], truth[i])


@dataclass
class AnalyzeResult:
    out: str
    report: str
    genres: list[str]
    nearest: dict[str, list[tuple[str, float]]]
    analogies: list[analysis.Analogy]
    tracks: int
    seconds: float
    pictures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"analyze -> {self.report}: {self.tracks} tracks in {len(self.genres)} genres, "
            f"{len(self.analogies)} analogies above the threshold, "
            f"{len(self.pictures)} pictures; {self.seconds:.1f} s."
        )


def run_analyze(config: AnalyzeConfig) -> AnalyzeResult:
    """Write the genre analysis of ``config.labels`` into ``config.out``."""
    start = time.perf_counter()
    for key in ("labels", "out"):
        if not getattr(config, key):
            raise ConfigError(f"no {key} given: set {key}=... (or --{key} ...)")
    files, version, _ = label_files(config.labels, config.model_version)
    mark_started()
    scan, sample = scan_labels(files, version=version, config=config)
    names, emb = scan.genres.embeddings(max_genres=config.max_genres, centre=config.centre)
    if len(names) < 2:
        raise GenreflowError(
            f"the labels of model {version} hold {len(names)} genre(s): an analysis needs 2 or more"
        )
    nearest = analysis.nearest_genres(names, emb, k=2)
    every = analysis.analogies(names, emb)
    null_scores = (
        analysis.analogy_null(
            sample.vectors,
            sample.labels,
            names,
            scan.genres.mean() if config.centre else None,
            permutations=config.null_permutations,
            seed=config.seed,
        )
        if sample.vectors is not None and config.null_permutations
        else np.zeros(0)
    )
    null_bar = float(np.quantile(null_scores, config.null_quantile)) if null_scores.size else -1.0
    bar = max(config.analogy_threshold, null_bar)
    found = [a for a in every if a.score > bar][: config.max_analogies]
    pictures = _pictures(config.out, names, emb, scan, sample)
    data: dict[str, Any] = {
        "model_version": version,
        "labels": config.labels,
        "tracks": scan.tracks,
        "grouped_by": "true genre" if scan.by_truth else "predicted genre",
        "genres": {g: scan.genres.counts[g] for g in names},
        "nearest_genres": {
            g: [{"genre": n, "cosine": round(s, 4)} for n, s in v] for g, v in nearest.items()
        },
        "analogy_threshold": config.analogy_threshold,
        "centred": config.centre,
        "shared_component_fraction": round(scan.genres.shared_fraction(), 4),
        "analogy_null": {
            "quantile": config.null_quantile,
            "score": round(null_bar, 4) if null_scores.size else None,
            "permutations": config.null_permutations,
            "sample_tracks": 0 if sample.vectors is None else len(sample.vectors),
        },
        "analogies": [a.__dict__ for a in found],
        "closest_analogies": [a.__dict__ for a in every[:5]],
        "accuracy": scan.confusion.accuracy() if scan.confusion.total else None,
        "accuracy_split": "test",
        "test_tracks": scan.confusion.total,
        "multi_label": scan.tags.summary() if scan.tags.tracks else None,
        "pictures": pictures,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    storage.write_json_atomic(storage.join(config.out, DATA_FILE), data)
    faultpoints.reached("analyze:before-report")
    report = storage.join(config.out, REPORT_FILE)
    storage.write_bytes_atomic(report, render_html(data, names).encode("utf-8"))
    return AnalyzeResult(
        out=config.out,
        report=report,
        genres=names,
        nearest=nearest,
        analogies=found,
        tracks=scan.tracks,
        seconds=time.perf_counter() - start,
        pictures=list(pictures.values()),
    )


def _save(fig: Any, out: str, name: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(out, name), buffer.getvalue())
    return name


def _pictures(
    out: str, names: list[str], emb: np.ndarray, scan: Scan, sample: Reservoir
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures: dict[str, str] = {}
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(names), 2)))
    colour_of = {g: colours[i % len(colours)] for i, g in enumerate(names)}
    _, components, mean, ratio = analysis.pca(emb.astype(np.float64), 3)
    genre_xy = (emb - mean) @ components.T
    tracks = sample.vectors if sample.vectors is not None else np.zeros((0, emb.shape[1]))
    track_xy = (tracks - mean) @ components.T

    fig, ax = plt.subplots(figsize=(7, 6))
    for g in names:
        mask = sample.labels == g
        ax.scatter(track_xy[mask, 0], track_xy[mask, 1], s=6, alpha=0.25, color=colour_of[g])
    for i, g in enumerate(names):
        ax.scatter(genre_xy[i, 0], genre_xy[i, 1], s=120, color=colour_of[g], edgecolor="black")
        ax.annotate(g, genre_xy[i, :2], textcoords="offset points", xytext=(6, 6))
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of genre variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    ax.set_title("Genre embeddings (large) and sampled tracks, 2-D PCA")
    pictures["pca_2d"] = _save(fig, out, "genre_pca_2d.png")

    fig = plt.figure(figsize=(7, 6))
    ax3 = fig.add_subplot(projection="3d")
    for i, g in enumerate(names):
        ax3.scatter(*genre_xy[i, :3], s=80, color=colour_of[g], edgecolor="black")
        ax3.text(*genre_xy[i, :3], g)
    ax3.set_xlabel("PC1")
    ax3.set_ylabel("PC2")
    ax3.set_zlabel("PC3")
    ax3.set_title(f"Genre embeddings, 3-D PCA ({ratio[:3].sum():.0%} of variance)")
    pictures["pca_3d"] = _save(fig, out, "genre_pca_3d.png")

    sim = analysis.similarity(emb)
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    image = ax.imshow(sim, cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    ax.set_title("Genre embedding similarity")
    pictures["similarity"] = _save(fig, out, "genre_similarity.png")

    if scan.confusion.total:
        labels, matrix = scan.confusion.matrix()
        rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(1 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
        ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
        for (i, j), n in np.ndenumerate(matrix):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted genre")
        ax.set_ylabel("catalog genre")
        ax.set_title(
            f"Test split: {scan.confusion.total} tracks, accuracy {scan.confusion.accuracy():.3f}"
        )
        pictures["confusion"] = _save(fig, out, "confusion.png")

    heat = [t for g in names for t in scan.heatmaps.get(g, [])]
    if heat:
        n_tokens = max(len(t.weights) for t in heat)
        grid = np.full((len(heat), n_tokens), np.nan)
        for r, t in enumerate(heat):
            grid[r, : len(t.weights)] = t.weights
        fig, ax = plt.subplots(figsize=(8, 0.8 + 0.35 * len(heat)))
        image = ax.imshow(grid, aspect="auto", cmap="magma")  # colour range: the weights' own
        ax.set_yticks(range(len(heat)), [f"{t.track_id} ({t.genre})" for t in heat])
        ax.set_xlabel("token (a slice of the clip, in time order)")
        fig.colorbar(image, ax=ax, label=f"attention weight (uniform: {1 / n_tokens:.3f})")
        ax.set_title("Attention over each track's tokens")
        pictures["attention"] = _save(fig, out, "attention.png")
    return pictures


EXPLAIN = {
    "pca_2d": "Each genre's embedding is the mean of its tracks' attention signatures. "
    "The axes are the two principal components of the genre embeddings; small dots are a "
    "random sample of tracks projected on the same axes. Genres far from the others "
    "sound unlike them to the model.",
    "pca_3d": "The same genre embeddings on the first three principal components.",
    "similarity": "Cosine similarity between genre embeddings: bright cells are genres the "
    "model hears as alike.",
    "confusion": "Catalog genre (rows) against the model's top genre (columns), for the "
    "test-split tracks whose catalog genre is known (tracks the model trained or was "
    "selected on are left out); rows are shaded by share.",
    "attention": "How each sample track's attention spreads over its tokens (time slices "
    "of the clip). The brightest cells are the track's signature moments.",
}


MAX_TAG_ROWS = 40  # genres listed in the report's multi-label table (most carried first)


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _multi_label_html(multi: dict[str, Any] | None) -> list[str]:
    """The report's multi-label section (none for a single-label model)."""
    e = html.escape
    parts: list[str] = []
    if multi:
        parts.append(
            f"<h2>Multi-label genres</h2><p>Thresholded, hierarchy-consistent genre tags of "
            f"the {multi['tracks']} test-split tracks with genre lists: micro-F1 "
            f"{_num(multi['micro_f1'])}, macro-F1 {_num(multi['macro_f1'])} (ROC-AUC and "
            "mAP per genre are in the training run's metrics.json).</p><table>"
            "<tr><th>genre</th><th>tracks</th><th>precision</th><th>recall</th><th>F1</th></tr>"
        )
        ranked = sorted(multi["per_genre"].items(), key=lambda kv: -int(kv[1]["support"]))
        for g, m in ranked[:MAX_TAG_ROWS]:
            parts.append(
                f"<tr><td>{e(g)}</td><td>{m['support']}</td><td>{_num(m['precision'])}</td>"
                f"<td>{_num(m['recall'])}</td><td>{_num(m['f1'])}</td></tr>"
            )
        parts.append("</table>")
    return parts


def _analogies_html(data: dict[str, Any], names: list[str]) -> list[str]:
    """The report's genre-analogy section."""
    e = html.escape
    parts: list[str] = []
    parts.append(
        f"<h2>Genre analogies</h2><p>A − B + C ≈ D where the cosine similarity of A − B + C "
        f"and D is above {data['analogy_threshold']}"
        + (
            f" and above {data['analogy_null']['score']:.3f}, the "
            f"{100 * data['analogy_null']['quantile']:g}th percentile of the same analogies "
            f"over shuffled genre labels ({data['analogy_null']['permutations']} shuffles of "
            f"{data['analogy_null']['sample_tracks']} sampled tracks)"
            if data["analogy_null"]["score"] is not None
            else ""
        )
        + ":</p>"
    )
    if data["analogies"]:
        parts.append("<ul>")
        parts += [
            f"<li>{e(a['a'])} − {e(a['b'])} + {e(a['c'])} ≈ <b>{e(a['d'])}</b> "
            f"({a['score']:.3f})</li>"
            for a in data["analogies"]
        ]
        parts.append("</ul>")
    else:
        closest = "; ".join(
            f"{e(a['a'])} − {e(a['b'])} + {e(a['c'])} ≈ {e(a['d'])} ({a['score']:.3f})"
            for a in data["closest_analogies"]
        )
        parts.append(
            f"<p>None beat the threshold{' (needs 4 or more genres)' if len(names) < 4 else ''}"
            f"{'. Closest: ' + closest if closest else ''}.</p>"
        )
    return parts


def render_html(data: dict[str, Any], names: list[str]) -> str:
    """The report page; every catalog-supplied string is escaped."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>genreflow genre analysis</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%;border:1px solid #ddd}td,th{padding:2px 10px;text-align:left}"
        "figure{margin:1.5em 0}figcaption{color:#444}</style></head><body>",
        "<h1>Genre analysis</h1>",
        f"<p>{data['tracks']} tracks labelled by model <code>{e(data['model_version'])}</code>, "
        f"grouped by {e(data['grouped_by'])}; written {e(data['created_at'])}.</p>",
    ]
    if data["accuracy"] is not None:
        parts.append(
            f"<p>Top-1 accuracy on the {data['test_tracks']} test-split tracks (held out "
            f"from training): {data['accuracy']:.3f}.</p>"
        )
    parts += _multi_label_html(data.get("multi_label"))
    shared = data["shared_component_fraction"]
    parts.append(
        f"<p>The component every track's signature shares (the catalog mean) holds "
        f"{100 * shared:.1f}% of the signatures' second moment; "
        + (
            "genre embeddings are compared after subtracting it.</p>"
            if data["centred"]
            else "it is <b>not</b> subtracted (centre=false), so genres look alike.</p>"
        )
    )
    parts.append("<h2>Nearest genres (2-NN on genre embeddings)</h2><table>")
    parts.append("<tr><th>genre</th><th>tracks</th><th>nearest</th><th>second</th></tr>")
    for g in names:
        near = data["nearest_genres"][g]
        cells = "".join(f"<td>{e(n['genre'])} ({n['cosine']:.3f})</td>" for n in near)
        parts.append(f"<tr><td>{e(g)}</td><td>{data['genres'][g]}</td>{cells}</tr>")
    parts.append("</table>")
    parts += _analogies_html(data, names)
    for key, name in data["pictures"].items():
        parts.append(
            f"<figure><img src='{e(name)}' alt='{e(key)}'>"
            f"<figcaption>{e(EXPLAIN.get(key, ''))}</figcaption></figure>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)
