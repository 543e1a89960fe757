"""The bench scripts run and write well-formed tables (smoke runs, micro model).

Timing goals are never asserted here: they are ratios for `bench/results/`.
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    """One synthetic corpus cache for the module's bench runs (synthesized once)."""
    return tmp_path_factory.mktemp("bench_corpus")


def test_round_costs_quick_writes_its_table(tmp_path, corpus_cache):
    out = tmp_path / "round_costs"
    result = subprocess.run(
        [sys.executable, "-m", "bench.round_costs", "--quick", "--model_size=micro",
         "--clients=1", "--repeats=1", "--skip_client_cost",
         "--num_train_speakers=4", f"--cache_dir={corpus_cache}",
         f"--out={out}", f"--work_dir={tmp_path / 'work'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "round_costs.json").read_text())
    names = [r["variant"] for r in data["rows"]]
    assert names == ["dense (ours, --pruning=none)", "compact, column 50%"]
    dense, compact = data["rows"]
    assert dense["down_vs_dense"] == 1.0 and compact["down_vs_dense"] < 0.8
    table = [l for l in (tmp_path / "round_costs.md").read_text().splitlines()
             if l.startswith("|")]
    widths = {l.count("|") for l in table}
    assert len(table) == 2 + len(names) and len(widths) == 1
    assert "compact, column 50%: bytes ≤ 0.55× dense" in (tmp_path / "round_costs.md").read_text()


def _table_rows(path):
    table = [l for l in path.read_text().splitlines() if l.startswith("|")]
    assert len({l.count("|") for l in table}) == 1, table  # one width: well formed
    return table[2:]


def test_pruning_overhead_quick_writes_its_table(tmp_path, corpus_cache):
    out = tmp_path / "pruning_overhead"
    result = subprocess.run(
        [sys.executable, "-m", "bench.pruning_overhead", "--quick", "--model_size=micro",
         "--clients=1", "--repeats=1", "--num_train_speakers=4",
         f"--cache_dir={corpus_cache}", f"--out={out}",
         f"--work_dir={tmp_path / 'work'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "pruning_overhead.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["structured column / server"]
    assert all(r["error"] is None and r["window_seconds_median"] > 0
               and r["none_window_seconds_median"] > 0 for r in data["rows"])
    assert len(_table_rows(tmp_path / "pruning_overhead.md")) == 1


def test_scaling_writes_its_table_and_slope(tmp_path, corpus_cache):
    out = tmp_path / "scaling"
    result = subprocess.run(
        [sys.executable, "-m", "bench.scaling", "--model_sizes=micro", "--cohorts=1,2",
         "--repeats=1", "--num_train_speakers=4", f"--cache_dir={corpus_cache}",
         f"--out={out}", f"--work_dir={tmp_path / 'work'}"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["cohort"] for r in data["rows"]] == [1, 2]
    assert all(r["worker_peak_rss_mib"] > 0 for r in data["rows"])
    # A slope is reported (its sign is timing: never asserted here).
    fit = data["fits"]["micro"]
    assert all(math.isfinite(fit[k]) for k in ("seconds_per_client", "rss_mib_per_client"))
    assert len(_table_rows(tmp_path / "scaling.md")) == 2
