"""The bench scripts run and write well-formed tables (smoke runs, micro model).

Timing goals are never asserted here: they are ratios for `bench/results/`.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_round_costs_quick_writes_its_table(tmp_path):
    out = tmp_path / "round_costs"
    result = subprocess.run(
        [sys.executable, "-m", "bench.round_costs", "--quick", "--model_size=micro",
         "--clients=2", "--repeats=1", "--skip_client_cost",
         "--num_train_speakers=4", f"--cache_dir={tmp_path / 'corpus'}",
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
