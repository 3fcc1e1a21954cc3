"""bench/gpu_check.py runs in the suite on the CPU (the same script a GPU machine runs
with ``--device cuda``), with only the libraries a bare GPU machine has."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
# what a GPU machine may lack: the check must not import any of it
ABSENT_ON_A_GPU_MACHINE = ("ray", "faiss", "librosa", "soundfile", "soxr", "sklearn", "fsspec")

RUN = """
import runpy, sys
sys.argv = ["gpu_check.py", *sys.argv[1:]]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("IMPORTED", sorted(m for m in {absent!r} if m in sys.modules))
sys.exit(code)
"""


def test_gpu_check_passes_on_cpu_with_torch_numpy_pyarrow_only(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    code = RUN.format(script=str(ROOT / "bench" / "gpu_check.py"), absent=ABSENT_ON_A_GPU_MACHINE)
    done = subprocess.run(
        [sys.executable, "-c", code, "--device", "cpu", "--preset", "tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "IMPORTED []" in done.stdout, done.stdout
    report = json.loads(out.read_text())
    assert report["front_end"]["ok"] and report["front_end"]["max_db_diff_loud"] < 0.05
    assert sorted(m["model"] for m in report["models"]) == [
        "baseline_cnn", "multimodal_han", "multitask_attention_cnn", "signature_attention",
    ]  # fmt: skip
    for model in report["models"]:
        assert model["ok"] and model["precision"] == "bf16"  # forced on a CPU: autocast runs
        assert model["train_samples_per_s"] > 0 and model["label_samples_per_s"] > 0
    assert "| signature_attention | bf16 |" in done.stdout  # the table RESULTS.md takes


def test_gpu_check_without_cuda_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    check = runpy.run_path(str(ROOT / "bench" / "gpu_check.py"), run_name="gpu_check")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert check["main"](["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().out
