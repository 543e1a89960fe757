"""Every preset in bazel_configs/ parses and validates; every _smoke variant runs."""

import glob
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from tff_prune import experiment_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = sorted(glob.glob(os.path.join(REPO, "bazel_configs", "*.cfg")))
PRESETS = [p for p in ALL if not p.endswith("_smoke.cfg")]
SMOKE = [p for p in ALL if p.endswith("_smoke.cfg")]


def _config(path, *extra):
    flags.FLAGS.unparse_flags()
    try:
        # Flagfiles name each other relative to the repository root.
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            flags.FLAGS(["run_experiment.py", f"--flagfile={path}", *extra])
        finally:
            os.chdir(cwd)
        return experiment_flags.experiment_config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()


def test_every_preset_has_a_smoke_variant():
    assert len(PRESETS) >= 12
    assert {os.path.basename(p)[:-4] + "_smoke.cfg" for p in PRESETS} == {
        os.path.basename(p) for p in SMOKE}


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses_and_validates(path):
    config = _config(path)
    assert config.experiment_name == os.path.basename(path)[:-4]


@pytest.mark.parametrize("path", SMOKE, ids=os.path.basename)
def test_smoke_variant_runs_end_to_end(path, tmp_path_factory):
    # Exactly as a user runs a preset (in its own process, which also keeps
    # this test process's memory flat).
    cache = tmp_path_factory.getbasetemp() / "smoke_corpus"  # shared: generated once
    out = tmp_path_factory.mktemp("smoke_out")
    name = os.path.basename(path)[:-4]
    result = subprocess.run(
        [sys.executable, "run_experiment.py", f"--flagfile=bazel_configs/{name}.cfg",
         f"--corpus_cache_dir={cache}", f"--root_output_dir={out}"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out WER" in result.stdout
    with open(out / name / "summary.json") as f:
        summary = json.load(f)
    assert 0.0 <= summary["final"]["cer"] <= 2.0
    if summary["config"]["pruning"]["scheme"] != "none":
        assert summary["final"]["sparsity_per_layer"]["overall"] > 0.2
