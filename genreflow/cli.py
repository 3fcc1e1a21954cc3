"""The ``genreflow`` command: one subcommand per stage, plus ``demo``.

Every stage takes ``--config FILE`` and trailing ``key=value`` overrides, parsed into
the stage's typed config; a bad key or value is reported before any work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genreflow.entry import run_stage, setup_logging
from genreflow.errors import ConfigError, GenreflowError
from genreflow.stages import STAGES, Stage

log = logging.getLogger("genreflow")

DEMO_GENRES_HELP = "ambient, classical, electronic, hiphop, jazz, rock"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genreflow",
        description="Music genre labelling, attention signatures and recommendations on Ray.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, Ray's logs, tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    parser_of: dict[str, argparse.ArgumentParser] = {}

    for stage in STAGES.values():
        parser_of[stage.name] = sub.add_parser(stage.name, help=stage.help)
        for flag in stage.flags:
            if flag.switch:
                parser_of[stage.name].add_argument(
                    flag.name, dest=flag.dest, action="store_true", default=None, help=flag.help
                )
            else:
                parser_of[stage.name].add_argument(
                    flag.name, dest=flag.dest, type=flag.kind or str, help=flag.help
                )
        _add_common(parser_of[stage.name])

    rec = sub.add_parser("recommend", help="similar tracks from a published index")
    rec.add_argument("--index", required=True, help="index folder (genreflow index --out)")
    query = rec.add_mutually_exclusive_group(required=True)
    query.add_argument("--track-id", help="a catalog track in the index")
    query.add_argument("--audio", help="an audio file, embedded with the index's checkpoint")
    rec.add_argument("-k", type=int, default=5, help="neighbours (default: %(default)s)")
    rec.add_argument("--json", action="store_true", help="print JSON: [{track_id, score}]")

    demo = sub.add_parser("demo", help="the whole pipeline on a generated demo catalog")
    demo.add_argument(
        "--out", default="genreflow-demo", help="working folder (default: %(default)s)"
    )
    demo.add_argument(
        "--tracks-per-genre",
        type=int,
        default=16,
        help=f"tracks per genre ({DEMO_GENRES_HELP}; default: %(default)s)",
    )
    demo.add_argument(
        "--epochs", type=int, default=10, help="training epochs (default: %(default)s)"
    )
    demo.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    command = COMMANDS.get(args.command) or (lambda a: run_registered(STAGES[a.command], a))
    return run_stage(lambda: command(args), verbose=args.verbose)


def run_registered(stage: Stage, args: argparse.Namespace) -> int:
    """A registered stage with its flags' values, ``--config`` and the overrides."""
    values = {flag.dest: getattr(args, flag.dest) for flag in stage.flags}
    return stage.execute(args.config, args.overrides, values)


def cmd_recommend(args: argparse.Namespace) -> int:
    from genreflow.formats.index import open_index

    if args.k < 1:
        raise ConfigError(f"-k must be >= 1, got {args.k}")
    loaded = open_index(args.index)
    if args.track_id is not None:
        rows = loaded.recommend(args.track_id, args.k)
        query = f"track {args.track_id}"
    else:
        from genreflow.pipelines.index import embed_audio

        checkpoint = loaded.info.get("checkpoint")
        if not checkpoint:
            raise GenreflowError(
                f"the index {args.index!r} names no checkpoint to embed audio with"
            )
        vector = embed_audio(
            args.audio, checkpoint, expected_version=loaded.info.get("model_version")
        )
        scores, found = loaded.search(vector[None], args.k)
        rows = loaded.rows(scores[0], found[0])
        query = args.audio
    if args.json:
        print(json.dumps([{"track_id": r["track_id"], "score": r["score"]} for r in rows]))
        return 0
    print(f"tracks most like {query} (cosine similarity of attention signatures):")
    for rank, row in enumerate(rows, 1):
        genre = f"  [{row['genre']}]" if row["genre"] else ""
        print(f"{rank:3d}. {row['track_id']}  {row['score']:.3f}{genre}")
    return 0


def _demo_outputs(work: Path, manifest: Path, checkpoint: str, local: list[str]) -> str | None:
    """The demo's steps 4-6: labels, the index and the report; the report's path (None:
    labelling failed)."""
    label, index, analyze = (STAGES[name] for name in ("label", "index", "analyze"))
    print(
        "[4/6] labelling the catalog with the best checkpoint (Ray Data, model actors) ...",
        flush=True,
    )
    labels = work / "labels"
    labelled = label.run(
        label.load_config(
            overrides=[*local, "incremental=true"],  # a rerun labels only what is missing
            values={
                "checkpoint": checkpoint,
                "input": str(manifest),
                "out": str(labels),
            },
        )
    )
    print("      " + labelled.summary())
    if labelled.failed:
        return None
    samples = _label_samples(str(labels), count=3)
    for row in samples:
        moments = ", ".join(
            f"{m['start_s']:.1f}-{m['end_s']:.1f} s ({m['weight']:.2f})"
            for m in row["signature_moments"]
        )
        print(
            f"      {row['track_id']}: {row['genre']} (p={row['genre_prob']:.2f}); "
            f"signature moments {moments}"
        )

    print("[5/6] building the recommendation index (FAISS) and neighbours table ...", flush=True)
    from genreflow.formats.index import open_index

    indexed = index.run(
        index.load_config(
            overrides=local, values={"labels": str(labels), "out": str(work / "index")}
        )
    )
    print("      " + indexed.summary())
    loaded = open_index(str(work / "index"))
    for row in samples[:2]:
        similar = ", ".join(
            f"{r['track_id']} [{r['genre']}] {r['score']:.2f}"
            for r in loaded.recommend(row["track_id"], 3)
        )
        print(f"      like {row['track_id']} [{row['genre']}]: {similar}")

    print("[6/6] writing the genre analysis report ...", flush=True)
    analyzed = analyze.run(
        analyze.load_config(values={"labels": str(labels), "out": str(work / "report")})
    )
    for genre, near in analyzed.nearest.items():
        print(f"      {genre}: nearest " + ", ".join(f"{n} ({s:.2f})" for n, s in near))
    print("      " + analyzed.summary())
    return str(analyzed.report)


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline on a generated catalog. Rerun into the same ``--out``, it
    continues: finished stages are kept, an interrupted one resumes, nothing is
    half-overwritten."""
    from genreflow.demo_catalog import make_demo_catalog
    from genreflow.train import finished_run

    ingest, train = STAGES["ingest"], STAGES["train"]

    work = Path(args.out).expanduser().resolve()
    started = time.perf_counter()
    local = [f"resources.num_cpus={args.num_cpus}"] if args.num_cpus else []
    train_config = train.load_config(
        overrides=[*local, f"epochs={args.epochs}", "lr=0.003", "resume=true"],
        values={"data": str(work / "dataset"), "out": str(work / "runs" / "signature_attention")},
    )
    metrics = finished_run(train_config.out, train_config)  # other settings: refused here
    if work.is_dir() and any(work.iterdir()):
        print(
            f"continuing the demo in {work}: finished stages are kept "
            f"(remove the folder, or pass --out NEW, to start over)",
            flush=True,
        )
    print(f"[1/6] generating the demo catalog in {work / 'catalog'} ...", flush=True)
    manifest = make_demo_catalog(
        work / "catalog", tracks_per_genre=args.tracks_per_genre, overwrite_other=False
    )
    print(f"      {manifest} ({time.perf_counter() - started:.0f} s)", flush=True)

    print("[2/6] ingesting it into Parquet token shards on a local Ray ...", flush=True)
    ingested = ingest.run(
        ingest.load_config(
            overrides=local, values={"catalog": str(manifest), "out": str(work / "dataset")}
        )
    )
    print("      " + ingested.summary())
    counts = ingested.manifest["counts"]
    genres = ingested.manifest["labels"]["genre"]
    print(f"      rows by split: {counts['by_split']}; genres: {genres}")
    if ingested.failed:
        return 1

    print(
        f"[3/6] training the tiny signature_attention model ({args.epochs} epochs, Ray Train) ...",
        flush=True,
    )
    if metrics is None:
        trained = train.run(train_config)  # resume=true: an interrupted run continues
        metrics = trained.metrics
        print("      " + trained.summary())
    else:
        print(f"      kept the model trained earlier in {train_config.out}")
    best = metrics["best_val"]
    print(
        f"      validation accuracy {best['val_accuracy']:.3f}, "
        f"macro-F1 {best['val_macro_f1']:.3f} "
        f"(chance: {1 / len(genres):.3f}); test accuracy {metrics['test']['accuracy']:.3f}"
    )

    report = _demo_outputs(work, manifest, metrics["best_checkpoint"], local)
    if report is None:
        return 1
    print(f"demo finished in {time.perf_counter() - started:.0f} s; outputs in {work}/")
    print(f"open the report: {Path(report).resolve()}")
    return 0


def _label_samples(labels: str, *, count: int) -> list[dict[str, Any]]:
    """The first ``count`` label rows of the newest model version's labels."""
    import pyarrow.parquet as pq

    from genreflow.formats.labels import label_files

    files, _, _ = label_files(labels, None)
    columns = ["track_id", "genre", "genre_prob", "signature_moments"]
    rows: list[dict[str, Any]] = pq.read_table(files[0], columns=columns).to_pylist()
    return rows[:count]


# the commands that are not stages (STAGES holds those)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "recommend": cmd_recommend,
    "demo": cmd_demo,
}


if __name__ == "__main__":
    sys.exit(main())
