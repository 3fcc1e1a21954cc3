"""A new model is two things: its module and its registry line. Registered here from a
module outside genreflow (``GENREFLOW_EXTRA_MODELS``, the registry's own way in), a
throwaway model appears in ``compare``'s defaults, the help text and the config checks,
and passes the shape, padding and DDP tests that every model passes, with no other file
touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

THROWAWAY = '''
from typing import Any, ClassVar

from torch import Tensor, nn

from genreflow.models.base import GenreModel, ModelOutput, mask_or_ones
from genreflow.tokens import TokenSpec


class Throwaway(GenreModel):
    """Mean mel spectrum of the real tokens -> one hidden layer -> the genres."""

    name = "throwaway"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"input_pool": 1, "hidden": 16},
        "paper": {"input_pool": 1, "hidden": 64},
    }

    def __init__(self, spec: TokenSpec, *, n_genres: int, n_moods: int = 3,
                 preset: str = "tiny", **overrides: Any) -> None:
        super().__init__(spec, n_genres=n_genres, n_moods=n_moods, preset=preset,
                         overrides=overrides)
        hidden = int(self.hp["hidden"])
        self.hidden = nn.Sequential(
            nn.LayerNorm(spec.n_mels), nn.Linear(spec.n_mels, hidden), nn.ReLU()
        )
        self.classifier = nn.Linear(hidden, n_genres)

    def forward(self, tokens: Tensor, token_mask: Tensor | None = None,
                lyrics: Tensor | None = None) -> ModelOutput:
        x = self.check_tokens(tokens, token_mask)
        mask = mask_or_ones(token_mask, x).float()
        spectrum = x.mean(dim=-1)
        pooled = (spectrum * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        embedding = self.hidden(pooled)
        return ModelOutput(self.classifier(embedding), None, None, embedding)
'''

CHECKS = """
from genreflow.config import load_config
from genreflow.pipelines.compare import CompareConfig
from genreflow.stages import STAGES
from genreflow.train import TrainConfig
assert CompareConfig().models[-1] == "throwaway", CompareConfig().models
assert "throwaway" in [f for f in STAGES["train"].flags if f.name == "--model"][0].help
assert load_config(TrainConfig, overrides=["model=throwaway"]).model == "throwaway"
from genreflow.models import model_class
assert model_class("throwaway").hyperparameters("tiny")["hidden"] == 16  # train's check
CompareConfig(models=["throwaway", "baseline_cnn"])  # compare's check
print("registered")
"""


def test_a_fifth_model_is_its_module_and_one_registry_line(tmp_path: Path) -> None:
    (tmp_path / "throwaway_model.py").write_text(THROWAWAY, encoding="utf-8")
    env = {
        **os.environ,
        "GENREFLOW_EXTRA_MODELS": "throwaway=throwaway_model:Throwaway",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    checks = subprocess.run(
        [sys.executable, "-c", CHECKS], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert checks.returncode == 0 and "registered" in checks.stdout, checks.stderr
    tests = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/models/test_models.py", "tests/models/test_ddp.py",
            "tests/test_model_lists.py", "-k", "throwaway or lists or registry",
        ],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-4000:]
    summary = tests.stdout.strip().splitlines()[-1]
    assert "failed" not in summary and "error" not in summary, summary
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 8, summary  # the shape, padding and DDP tests ran for it
