"""The GPU check: every GPU code path of genreflow's models, run on one device.

    python bench/gpu_check.py                                  # CUDA, paper presets
    python bench/gpu_check.py --device cpu --preset tiny       # what the test suite runs
    python bench/gpu_check.py --json out.json                  # also write the results

Needs torch, numpy, pyarrow, PyYAML and scipy only (no Ray, FAISS or librosa: a GPU
machine may have nothing else). For each model it runs what training and labelling run
on a GPU worker, with the code they use:

- **train**: steps of the training recipe with mixed precision (``auto``: bf16 where the
  GPU supports it, fp16 with a grad scaler elsewhere; on a CPU bf16 is forced, so the
  autocast path runs); the loss must be finite and the weights must move;
- **inference**: the trained model in eval mode on the device against the same model on
  the CPU in float32; the largest difference of logits and signatures, relative to
  their largest value, must stay within ``INFERENCE_TOL`` (cuDNN's TF32 convolutions,
  on by default, round to 10-bit mantissas);
- **folded**: the labeller's model (batch norm folded into the convolutions,
  channels_last) against the unfolded one, on the device, within ``FOLD_TOL``;
- **speed**: training and labelling samples per second at the preset.

With ``--preset paper`` (the default) one more row: ``signature_attention`` on the
pretrained musicnn front end (its ``musicnn`` preset and token spec), frozen as the
recommended training runs it: the labelling speed a catalog gets with the bigger front
end. Its converted weights come from the cache (``$GENREFLOW_CACHE``) or the installed
wheel; a machine with neither runs it with musicnn's architecture at random weights,
which costs the same time (the row says so).

And once: the torch log-mel front end on the device against the numpy one, in dB, over
the time-frequency bins within 80 dB of each clip's peak (below that both approach the
-100 dB floor through rounding noise), within ``FRONT_END_TOL_DB``.

Prints a Markdown table for bench/RESULTS.md; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genreflow import checkpoint as ckpt
from genreflow import train as train_module
from genreflow.errors import ConfigError
from genreflow.features import log_mel_for_spec, log_mel_torch
from genreflow.models import MODELS
from genreflow.models.base import inference_model
from genreflow.tokens import TokenSpec
from genreflow.tokens import preset as token_preset
from genreflow.train import TrainConfig, TrainingRecipe

INFERENCE_TOL = {"cpu": 1e-5, "cuda": 1e-2}
FOLD_TOL = {"cpu": 1e-4, "cuda": 1e-2}
FRONT_END_TOL_DB = 0.05
FRONT_END_TOL_LOG1P = 0.01  # log10(1 + 10000 mel) units, every bin
GENRES = [f"genre{i}" for i in range(8)]
MOODS = ["sad", "neutral", "happy"]
WORDS = ["<pad>", "<unk>", *[f"w{i}" for i in range(998)]]

PRESETS: dict[str, dict[str, Any]] = {
    # the papers' token layout (TokenSpec's defaults: 10 tokens of 4 s, 128 mels)
    "paper": {"spec": TokenSpec(), "train_batch": 32, "label_batch": 64, "steps": 10},
    "tiny": {
        "spec": TokenSpec(clip_s=8.0, n_tokens=4, token_s=2.0, n_mels=32),
        "train_batch": 4,
        "label_batch": 4,
        "steps": 2,
    },
    # signature_attention's pretrained front end (ten 3 s tokens, 96 mels, log1p)
    "musicnn": {"spec": token_preset("musicnn"), "train_batch": 16, "label_batch": 32, "steps": 5},
}


def batch(spec: TokenSpec, size: int, *, seed: int, device: torch.device) -> dict[str, Any]:
    """Random tokens in the log-mel range, labels, and lyrics on half the tracks."""
    g = torch.Generator().manual_seed(seed)
    lyrics = torch.randint(2, len(WORDS), (size, 6, 10), generator=g)
    lyrics[::2] = 0
    noise = torch.randn((size, *spec.token_shape), generator=g)
    tokens = (noise.abs() * 1.5) if spec.scale == "log1p" else noise * 15 - 40
    return {
        "tokens": tokens.to(device),
        "genre_idx": torch.randint(0, len(GENRES), (size,), generator=g).to(device),
        "mood_idx": torch.randint(-1, len(MOODS), (size,), generator=g).to(device),
        "lyrics_ids": lyrics.to(device),
    }


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``, on the CPU in float32."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_model(name: str, preset: str, device: torch.device) -> dict[str, Any]:
    setup = PRESETS[preset]
    spec: TokenSpec = setup["spec"]
    steps, kind = int(setup["steps"]), device.type
    config = TrainConfig(
        model=name,
        preset=preset,
        batch_size=setup["train_batch"],
        mixed_precision="auto" if kind == "cuda" else "bf16",
    )
    weights = "converted"
    labels: dict[str, Any] = {"genres": GENRES, "moods": MOODS, "words": WORDS, "device": device}
    try:
        recipe = TrainingRecipe(config, spec, **labels)
    except ConfigError as exc:  # the musicnn front end without its weights on this machine
        if preset != "musicnn":
            raise
        print(f"musicnn weights unavailable ({exc}); timing its architecture at random weights")
        weights = "random"
        original = train_module.load_pretrained
        train_module.load_pretrained = lambda model: None  # random front-end weights
        try:
            recipe = TrainingRecipe(config, spec, **labels)
        finally:
            train_module.load_pretrained = original
    recipe.prepare()
    before = [p.detach().clone() for p in recipe.model.parameters()]
    batches = [batch(spec, setup["train_batch"], seed=i, device=device) for i in range(steps)]
    recipe.net.train()
    losses = [recipe.step(b) for b in batches[:1]]  # warm-up: cuDNN picks its algorithms
    sync(device)
    start = time.perf_counter()
    losses += [recipe.step(b) for b in batches]
    sync(device)
    train_rate = steps * setup["train_batch"] / (time.perf_counter() - start)
    moved = max(
        float((p.detach() - q).abs().max())
        for p, q in zip(recipe.model.parameters(), before, strict=True)
    )
    result: dict[str, Any] = {
        "model": name if preset != "musicnn" else f"{name} (musicnn, {weights} weights)",
        "precision": recipe.precision.name,
        "loss_finite": all(math.isfinite(v) for v in losses),
        "weights_moved": moved > 0,  # the head's, where the front end is frozen
        "train_samples_per_s": train_rate,
    }

    # the trained model through a checkpoint, as a labeller loads it
    probe = batch(spec, setup["label_batch"], seed=99, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        ckpt.save(folder, recipe.state(0, {}))
        loaded = ckpt.load_model(folder)
    model = loaded.model.eval()
    lyrics = probe["lyrics_ids"] if model.uses_lyrics else None
    with torch.no_grad():
        reference = model(probe["tokens"], lyrics=lyrics)  # CPU, float32, unfolded
        on_device = copy.deepcopy(model).to(device)
        plain = on_device(
            probe["tokens"].to(device), lyrics=None if lyrics is None else lyrics.to(device)
        )
        labeller = inference_model(copy.deepcopy(model), device)
        tokens = probe["tokens"].to(device)
        device_lyrics = None if lyrics is None else lyrics.to(device)
        folded = labeller(tokens, lyrics=device_lyrics)
        result["inference_vs_cpu"] = max(
            relative(plain.genre_logits, reference.genre_logits),
            relative(plain.embedding, reference.embedding),
        )
        result["folded_vs_unfolded"] = max(
            relative(folded.genre_logits, plain.genre_logits),
            relative(folded.embedding, plain.embedding),
        )
        for _ in range(2):  # warm-up
            labeller(tokens, lyrics=device_lyrics)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            labeller(tokens, lyrics=device_lyrics)
        sync(device)
        result["label_samples_per_s"] = steps * len(tokens) / (time.perf_counter() - start)
    result["ok"] = bool(
        result["loss_finite"]
        and result["weights_moved"]
        and result["inference_vs_cpu"] <= INFERENCE_TOL[kind]
        and result["folded_vs_unfolded"] <= FOLD_TOL[kind]
    )
    return result


def check_front_end(preset: str, device: torch.device) -> dict[str, Any]:
    """Three clips (low tone, high tone with noise, a silent first half) through both."""
    spec: TokenSpec = PRESETS[preset]["spec"]
    t = np.arange(spec.clip_samples) / spec.sample_rate
    rng = np.random.default_rng(0)
    clips = np.stack(
        [
            0.5 * np.sin(2 * np.pi * 110 * t) * np.exp(-t / 10),
            0.2 * np.sin(2 * np.pi * 2500 * t) + 0.02 * rng.standard_normal(t.size),
            np.where(t < spec.clip_s / 2, 0.0, 0.1 * rng.standard_normal(t.size)),
        ]
    ).astype(np.float32)
    reference = np.stack([log_mel_for_spec(c, spec) for c in clips])
    ours = log_mel_torch(torch.from_numpy(clips).to(device), spec).cpu().numpy()
    diff = np.abs(ours - reference)
    if spec.scale == "log1p":  # no floor to approach: every bin counts
        loud, tolerance = np.ones_like(diff, dtype=bool), FRONT_END_TOL_LOG1P
    else:
        loud, tolerance = (
            reference > reference.max(axis=(1, 2), keepdims=True) - 80.0,
            FRONT_END_TOL_DB,
        )
    worst = float(diff[loud].max())
    return {
        "shape_equal": ours.shape == reference.shape,
        "max_db_diff_loud": worst,
        "max_db_diff_all": float(diff.max()),
        "ok": bool(ours.shape == reference.shape and worst <= tolerance),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--models", nargs="*", default=sorted(MODELS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--no-musicnn", action="store_true", help="skip the musicnn row")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False (use --device cpu)")
        return 2
    started = time.perf_counter()
    front_end = check_front_end(args.preset, device)
    models = [check_model(name, args.preset, device) for name in args.models]
    musicnn_front_end = None
    if args.preset == "paper" and not args.no_musicnn:
        musicnn_front_end = check_front_end("musicnn", device)
        models.append(check_model("signature_attention", "musicnn", device))
    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "preset": args.preset,
        "front_end": front_end,
        "musicnn_front_end": musicnn_front_end,
        "models": models,
        "seconds": time.perf_counter() - started,
    }
    print(f"GPU check on {report['device']} (torch {report['torch']}, CUDA {report['cuda']}), "
          f"{args.preset} preset, {report['seconds']:.0f} s")  # fmt: skip
    kind = device.type
    print(
        f"\nfront end: log-mel on {device} vs numpy: max {front_end['max_db_diff_loud']:.4f} dB "
        f"within 80 dB of the peak (tolerance {FRONT_END_TOL_DB} dB), "
        f"{front_end['max_db_diff_all']:.4f} dB overall: {'ok' if front_end['ok'] else 'FAIL'}\n"
    )
    if musicnn_front_end is not None:
        print(
            f"musicnn front end (log1p) on {device} vs numpy: max "
            f"{musicnn_front_end['max_db_diff_loud']:.5f} (tolerance {FRONT_END_TOL_LOG1P}): "
            f"{'ok' if musicnn_front_end['ok'] else 'FAIL'}\n"
        )
    tolerances = f"(tol {INFERENCE_TOL[kind]:g}) | folded vs unfolded (tol {FOLD_TOL[kind]:g})"
    header = "| model | precision | train samples/s | label samples/s | inference vs CPU"
    print(f"{header} {tolerances} | ok |")
    print("|---|---|---:|---:|---:|---:|---|")
    for m in models:
        print(
            f"| {m['model']} | {m['precision']} | {m['train_samples_per_s']:.1f} | "
            f"{m['label_samples_per_s']:.1f} | {m['inference_vs_cpu']:.2e} | "
            f"{m['folded_vs_unfolded']:.2e} | {'ok' if m['ok'] else 'FAIL'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    fronts_ok = front_end["ok"] and (musicnn_front_end is None or musicnn_front_end["ok"])
    return 0 if fronts_ok and all(m["ok"] for m in models) else 1


if __name__ == "__main__":
    sys.exit(main())
