"""Quality on a labelled catalog: genreflow's commands against yardsticks, one table.

    .venv/bin/python bench/quality.py --manifest bench/_work/music/manifest.csv \\
        [--work bench/_work/quality] [--runs default,recommended] [--set key=value ...]

The manifest needs ``track_id, uri, genre, split`` and a grouping column (``--group``,
default ``album``; ``artist_id`` works too) whose groups never straddle splits
(bench/music_catalog.py builds such a catalog of real music). For each run it types
what a user types: ``genreflow ingest`` (the run's token spec), ``genreflow train``,
``genreflow label`` over the whole catalog and ``genreflow index``, then reads:

- macro-F1 and accuracy of the labels' top genre on the ``test`` split;
- same-group precision@5 of the index's neighbours table (every track's five nearest
  other tracks: the fraction in its own group), over all tracks, and the chance level.

Yardsticks, on the same splits: MFCC (20 coefficients, mean and standard deviation
over the clip) and pretrained musicnn (MSD) embeddings, mean over the clip's ten 3 s
patches, of two layers: the 200-d penultimate layer and the 1506-d batch-normed pools
(the features genreflow's recommended model reads). Each is standardised and fed to a
logistic regression fit on ``train`` with C chosen on ``val`` -- the data genreflow's
runs get (they train on ``train`` and keep the epoch best on ``val``) -- and, in a
second row, refit on ``train`` + ``val``, which also learns from the validation groups.
Their precision@5 is cosine over the features minus their catalog mean, as genreflow's
index does with signatures. Runs:

- ``default``: ``genreflow train --model signature_attention`` with every default (the
  tiny from-scratch model on the paper-000 spec);
- ``recommended``: ``genreflow train --config configs/train-musicnn.yaml`` on a
  ``spec=musicnn`` dataset (README's recommended command; it fine-tunes musicnn, about
  40 minutes a run for ~100 training tracks on 2 CPUs).

``--set`` adds ``key=value`` overrides to the recommended run (recipe ablations).
Every finished run leaves its row in ``<work>/rows/`` with the digests of its manifest and
config file and the commit; ``--reuse`` reads back a row whose manifest and config are
unchanged instead of running it again (a fine-tuning fold takes most of an hour on a CPU;
an interrupted ``--folds`` run resumes). Code changes are not detected: the row's commit
says which code made it.

``--folds K`` (K >= 3) replaces the manifest's split by K album-disjoint folds, dealt
per genre so that every fold holds albums of every genre it can: fold i is ``test``,
fold i+1 ``val``, the rest ``train``. Every album is tested exactly once; each row is
then reported as the mean and standard deviation over the folds, with the per-fold
numbers in the JSON. One split of a few test albums moves macro-F1 by a tenth; the folds
say how much of a difference between rows is the split's.

Results: ``<work>/quality-<runs>.json`` (``-folds<K>`` with folds) and a Markdown table
on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from genreflow.formats.index import read_neighbours  # noqa: E402
from genreflow.formats.labels import read_labels  # noqa: E402

RUNS: dict[str, tuple[str, list[str]]] = {
    "default": ("paper000", ["--model", "signature_attention"]),
    "recommended": ("musicnn", ["--config", str(ROOT / "configs" / "train-musicnn.yaml")]),
}
K = 5


def genreflow(*args: str, log: Path) -> None:
    """Run one genreflow command as a user would; its output goes to ``log``."""
    exe = Path(sys.executable).with_name("genreflow")
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([str(exe), *args], stdout=f, stderr=subprocess.STDOUT)
    took = time.perf_counter() - started
    print(f"  genreflow {' '.join(args[:1])} ({took:.0f} s) -> {log}", flush=True)
    if done.returncode != 0:
        raise SystemExit(f"genreflow {' '.join(args)} failed ({done.returncode}); see {log}")


def precision_at_k(neighbours: dict[str, list[str]], group: dict[str, str]) -> float:
    scores = [
        np.mean([group[n] == group[t] for n in found[:K]])
        for t, found in neighbours.items()
        if len(found) >= K
    ]
    return float(np.mean(scores))


def chance(group: dict[str, str]) -> float:
    sizes = pd.Series(list(group.values())).value_counts()
    n = len(group)
    return float(((sizes - 1) / (n - 1) * sizes).sum() / n)


def cosine_neighbours(ids: list[str], features: np.ndarray) -> dict[str, list[str]]:
    x = features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)[:, :K]
    return {ids[i]: [ids[j] for j in row] for i, row in enumerate(order)}


def classification(truth: pd.Series, predicted: pd.Series) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "accuracy": float(accuracy_score(truth, predicted)),
    }


def commit() -> str | None:
    """The checkout's commit (with ``+`` when it has uncommitted changes), if it is one."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def run_tag(name: str, extra: list[str]) -> str:
    """A run's name in the work folder: the run and a digest of its ``--set`` overrides."""
    return name + ("-" + hashlib.sha1(" ".join(extra).encode()).hexdigest()[:6] if extra else "")


def run_inputs(manifest: Path, train_args: list[str]) -> dict[str, str | None]:
    """What a run's row depends on besides its tag and the code: the SHA-1 of the
    manifest and of the ``--config`` file the run trains with (if any)."""
    config = train_args[train_args.index("--config") + 1] if "--config" in train_args else None
    return {
        "manifest_sha1": hashlib.sha1(manifest.read_bytes()).hexdigest(),
        "config_sha1": hashlib.sha1(Path(config).read_bytes()).hexdigest() if config else None,
    }


def genreflow_run(
    name: str,
    manifest: Path,
    work: Path,
    extra: list[str],
    group: dict[str, str],
    *,
    reuse: bool = False,
) -> dict[str, Any]:
    """One run's row: ingest (once per work folder), train, label and index as a user
    would. Every finished run leaves its row at ``<work>/rows/<tag>.json``; with
    ``reuse`` a run that has one is read back instead of run again (a run takes minutes
    to hours, and an interrupted ``--folds`` run then picks up where it stopped)."""
    spec, train_args = RUNS[name]
    dataset = work / f"dataset-{spec}"
    tag = run_tag(name, extra)
    stored = work / "rows" / f"{tag}.json"
    inputs = run_inputs(manifest, train_args)
    if reuse and stored.exists():
        row: dict[str, Any] = json.loads(stored.read_text())
        if all(row.get(k) == v for k, v in inputs.items()):
            print(
                f"{tag}: reused {stored} (commit {row.get('commit')}, "
                f"finished {row.get('finished')})",
                flush=True,
            )
            return row
        print(f"{tag}: {stored} is of another manifest or config; running again", flush=True)
    run, labels, index = work / "runs" / tag, work / "labels" / tag, work / "index" / tag
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stored.unlink(missing_ok=True)
    made_by = commit()  # the code as the run starts
    print(f"{tag}: {' '.join(train_args + extra)}", flush=True)
    started = time.perf_counter()
    if not (dataset / "_dataset.json").exists():
        genreflow(
            "ingest", "--catalog", str(manifest), "--out", str(dataset), f"spec={spec}",
            log=logs / f"ingest-{spec}.log",
        )  # fmt: skip
    for folder in (run, labels, index):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    genreflow(
        "train", *train_args, "--data", str(dataset), "--out", str(run), *extra,
        log=logs / f"train-{tag}.log",
    )  # fmt: skip
    train_s = time.perf_counter() - started
    genreflow(
        "label", "--checkpoint", str(run), "--input", str(manifest), "--out", str(labels),
        log=logs / f"label-{tag}.log",
    )  # fmt: skip
    label_log = (logs / f"label-{tag}.log").read_text()
    speed = re.search(r"labelled, \d+ errors, ([\d.]+) tracks/s", label_log)
    genreflow("index", "--labels", str(labels), "--out", str(index), log=logs / f"index-{tag}.log")
    df = read_labels(str(labels), ["track_id", "genre", "true_genre", "split"])
    test = df[df["split"] == "test"]
    table = read_neighbours(str(index)).to_pylist()
    found = {r["track_id"]: [n["track_id"] for n in r["neighbours"]] for r in table}
    metrics = json.loads((run / "metrics.json").read_text())
    row = {
        "run": tag,
        "command": " ".join(["genreflow train", *train_args, *extra]),
        **classification(test["true_genre"], test["genre"]),
        "p_at_5": precision_at_k(found, group),
        "best_epoch": metrics.get("best_epoch"),
        "train_s": round(train_s),
        "label_tracks_per_s": float(speed.group(1)) if speed else None,
        **inputs,
        "commit": made_by,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    stored.parent.mkdir(exist_ok=True)
    partial = stored.with_suffix(".json.partial")
    partial.write_text(json.dumps(row, indent=2) + "\n")
    os.replace(partial, stored)
    return row


def resolve(uri: str, manifest: Path) -> str:
    """A manifest's ``uri`` as a path: relative ones are relative to the manifest."""
    return uri if os.path.isabs(uri) else str((manifest.parent / uri).resolve())


def album_folds(catalog: pd.DataFrame, group: str, folds: int, seed: int = 0) -> list[pd.Series]:
    """The ``split`` column of each of ``folds`` group-disjoint folds of ``catalog``.

    Groups are dealt to folds genre by genre (a group's genre is its most common one),
    shuffled by ``seed`` within a genre and continuing round the folds from one genre to
    the next, so the folds have equal numbers of groups (within one) and each holds
    groups of every genre that has at least ``folds`` of them. Fold ``i`` is ``test``,
    fold ``i + 1`` (cyclically) ``val``, every other fold ``train``."""
    if folds < 3:
        raise SystemExit("--folds needs at least 3 folds (a test, a val and a train fold)")
    genre_of = catalog.groupby(group)["genre"].agg(lambda g: sorted(g.mode())[0])
    if len(genre_of) < folds:
        raise SystemExit(f"--folds {folds}: the catalog has only {len(genre_of)} {group}s")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    dealt = 0
    for genre in sorted(set(genre_of)):
        members = sorted(genre_of.index[genre_of == genre])
        for member in rng.permutation(members):
            fold_of[str(member)] = dealt % folds
            dealt += 1
    names = {0: "test", 1: "val"}
    return [
        catalog[group].map(lambda g, i=i: names.get((fold_of[g] - i) % folds, "train"))
        for i in range(folds)
    ]


def yardstick_features(catalog: pd.DataFrame, manifest: Path, work: Path) -> dict[str, np.ndarray]:
    """MFCC statistics and musicnn embeddings of every clip (cached per list of clips, so
    the folds of one catalog share them)."""
    clips = "\n".join(f"{t},{u}" for t, u in zip(catalog["track_id"], catalog["uri"], strict=True))
    cache = work / f"yardsticks-v3-{hashlib.sha1(clips.encode()).hexdigest()[:12]}.npz"
    if cache.exists():
        return dict(np.load(cache))
    import librosa
    import torch

    from genreflow.audio import load_clip
    from genreflow.decode import tokenize_track
    from genreflow.pretrained.musicnn import load_pretrained
    from genreflow.tokens import preset

    net, spec = load_pretrained("MSD_musicnn"), preset("musicnn")
    mfcc, emb, pooled = [], [], []
    for i, uri in enumerate(catalog["uri"]):
        path = resolve(uri, manifest)
        clip = load_clip(path, sample_rate=22050, clip_s=30.0)
        coeffs = librosa.feature.mfcc(y=clip.samples, sr=22050, n_mfcc=20)
        mfcc.append(np.concatenate([coeffs.mean(axis=1), coeffs.std(axis=1)]))
        tokens, _ = tokenize_track(path, spec)  # [10, 96, 187]
        with torch.no_grad():
            out = net(torch.from_numpy(tokens.astype(np.float32)).transpose(1, 2))
        emb.append(out.penultimate.mean(dim=0).numpy())
        pooled.append(out.pooled.mean(dim=0).numpy())
        if (i + 1) % 50 == 0:
            print(f"  yardstick features: {i + 1}/{len(catalog)}", flush=True)
    arrays = {"mfcc": np.stack(mfcc), "musicnn": np.stack(emb), "pooled": np.stack(pooled)}
    np.savez(cache, mfcc=arrays["mfcc"], musicnn=arrays["musicnn"], pooled=arrays["pooled"])
    return arrays


def yardstick(
    name: str,
    features: np.ndarray,
    catalog: pd.DataFrame,
    group: dict[str, str],
    *,
    refit: bool = False,
) -> dict[str, Any]:
    """Logistic regression on standardised ``features``: fit on ``train`` with C chosen
    on ``val`` (the data genreflow's runs get); ``refit`` then fits again on train + val,
    which sees the validation groups as well."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    split, genre = catalog["split"].to_numpy(), catalog["genre"].to_numpy()
    x = StandardScaler().fit_transform(features)
    tr, va, te = split == "train", split == "val", split == "test"
    best: tuple[float, float, Any] = (-1.0, 0.0, None)
    for c in (0.001, 0.01, 0.1, 1.0, 10.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(x[tr], genre[tr])
        f1 = float(f1_score(genre[va], model.predict(x[va]), average="macro"))
        if f1 > best[0]:
            best = (f1, c, model)
    _, c, model = best
    if refit:
        model = LogisticRegression(C=c, max_iter=5000).fit(x[tr | va], genre[tr | va])
    predicted = pd.Series(model.predict(x[te]))
    return {
        "run": name + (", refit on train+val" if refit else ""),
        "command": f"logistic regression, C={c} chosen on val"
        + (", refit on train+val" if refit else ", fit on train"),
        **classification(pd.Series(genre[te]), predicted),
        "p_at_5": precision_at_k(
            cosine_neighbours(list(catalog["track_id"]), features - features.mean(axis=0)), group
        ),
    }


YARDSTICKS = (
    ("MFCC mean/std + LR", "mfcc"),
    ("musicnn (MSD) penultimate embeddings + LR", "musicnn"),
    ("musicnn (MSD) pooled features + LR", "pooled"),
)
METRICS = ("macro_f1", "accuracy", "p_at_5")
PROVENANCE = (
    "manifest_sha1",
    "config_sha1",
    "commit",
    "finished",
)  # per run, not summed over folds


def evaluate(
    catalog: pd.DataFrame,
    manifest: Path,
    work: Path,
    runs: list[str],
    extra: list[str],
    group: dict[str, str],
    features: dict[str, np.ndarray] | None,
    *,
    reuse: bool = False,
) -> list[dict[str, Any]]:
    """Every row of the table on the splits of ``catalog`` (written at ``manifest``)."""
    rows = []
    if features is not None:
        for label, key in YARDSTICKS:
            rows.append(yardstick(label, features[key], catalog, group))
            rows.append(yardstick(label, features[key], catalog, group, refit=True))
    for name in runs:
        overrides = extra if name == "recommended" else []
        rows.append(genreflow_run(name, manifest, work, overrides, group, reuse=reuse))
    return rows


def summarise(per_fold: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run: each metric's mean and standard deviation over the folds."""
    rows = []
    for same in zip(*per_fold, strict=True):
        row = {k: v for k, v in same[0].items() if k not in METRICS + PROVENANCE}
        if any(r.get("commit") for r in same):
            row["commit"] = ",".join(sorted({str(r.get("commit")) for r in same}))
        for metric in METRICS:
            values = np.array([r[metric] for r in same])
            row[metric], row[metric + "_sd"] = float(values.mean()), float(values.std(ddof=1))
            row[metric + "_folds"] = [round(float(v), 4) for v in values]
        for key in ("train_s", "label_tracks_per_s"):
            if same[0].get(key) is not None:
                row[key] = round(float(np.mean([r[key] for r in same])), 1)
        if same[0].get("best_epoch") is not None:
            row["best_epoch"] = "/".join(str(r["best_epoch"]) for r in same)
        rows.append(row)
    return rows


def cell(row: dict[str, Any], metric: str) -> str:
    sd = row.get(metric + "_sd")
    return f"{row[metric]:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "quality")
    parser.add_argument("--runs", default="default,recommended")
    parser.add_argument("--group", default="album")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="cross-validate over this many --group-disjoint folds (>= 3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="how --folds deals the groups")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the recommended run")
    parser.add_argument("--no-yardsticks", action="store_true")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read back runs that finished earlier in the same work folder (same manifest, "
        "config and --set) instead of running them again; each row says its commit",
    )
    args = parser.parse_args(argv)
    manifest, work = args.manifest.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    catalog = pd.read_csv(manifest, dtype=str)
    group = dict(zip(catalog["track_id"], catalog[args.group], strict=True))
    runs = [r for r in args.runs.split(",") if r]
    features = None if args.no_yardsticks else yardstick_features(catalog, manifest, work)
    if args.folds:
        catalog = catalog.assign(uri=[resolve(u, manifest) for u in catalog["uri"]])
        per_fold, tested_per_fold = [], []
        for i, split in enumerate(album_folds(catalog, args.group, args.folds, args.seed)):
            fold = catalog.assign(split=split)
            digest = hashlib.sha1(fold.to_csv(index=False).encode()).hexdigest()[:8]
            fold_work = work / f"folds{args.folds}" / f"fold{i}-{digest}"
            fold_work.mkdir(parents=True, exist_ok=True)
            fold_manifest = fold_work / "manifest.csv"
            fold.to_csv(fold_manifest, index=False)
            tested = sorted(set(fold.loc[fold["split"] == "test", args.group]))
            tested_per_fold.append(tested)
            print(f"fold {i + 1}/{args.folds}: test {', '.join(tested)}", flush=True)
            per_fold.append(
                evaluate(
                    fold,
                    fold_manifest,
                    fold_work,
                    runs,
                    args.set,
                    group,
                    features,
                    reuse=args.reuse,
                )
            )
        rows = summarise(per_fold)
        splits = f"{args.folds} {args.group}-disjoint folds (seed {args.seed})"
    else:
        crossing = catalog.groupby(args.group)["split"].nunique()
        if (crossing > 1).any():
            raise SystemExit(f"groups straddle splits: {sorted(crossing[crossing > 1].index)}")
        per_fold, tested_per_fold = [], []
        rows = evaluate(catalog, manifest, work, runs, args.set, group, features, reuse=args.reuse)
        counts = catalog["split"].value_counts().to_dict()
        splits = f"the manifest's split: {counts}"
    result = {
        "manifest": str(manifest),
        "tracks": len(catalog),
        "groups": int(catalog[args.group].nunique()),
        "splits": splits,
        "chance_p_at_5": chance(group),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "rows": rows,
        **({"folds": per_fold} if per_fold else {}),
    }
    name = ("+".join(runs) or "yardsticks") + (f"-folds{args.folds}" if args.folds else "")
    out = work / f"quality-{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\n{len(catalog)} tracks, {result['groups']} {args.group}s, {splits}; "
        f"chance precision@5 {result['chance_p_at_5']:.2f}\n"
    )
    print(
        "| run | test macro-F1 | test accuracy | same-group precision@5 | best epoch "
        "| train s | label tracks/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['run']} | {cell(r, 'macro_f1')} | {cell(r, 'accuracy')} | {cell(r, 'p_at_5')} "
            f"| {r.get('best_epoch') or ''} | {r.get('train_s') or ''} "
            f"| {r.get('label_tracks_per_s') or ''} |"
        )
    if per_fold:
        print(
            f"\ntest macro-F1 per fold (test {args.group}s: "
            + "; ".join(f"{i + 1} {', '.join(t)}" for i, t in enumerate(tested_per_fold))
            + ")\n"
        )
        print("| run | " + " | ".join(f"fold {i + 1}" for i in range(args.folds)) + " |")
        print("| --- |" + " --- |" * args.folds)
        for r in rows:
            print(f"| {r['run']} | " + " | ".join(f"{v:.3f}" for v in r["macro_f1_folds"]) + " |")
    print(f"\n-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
