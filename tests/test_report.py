"""The report tool: table and plots from real finished smoke runs, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import shell_env
from tff_prune import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The session's shared smoke runs (conftest.smoke_run) of these presets:
# 2 micro rounds that prune to 50%, evaluated every round.
SCHEMES = {"structured": "fedprune_structured_smoke",
           "unstructured": "fedprune_unstructured_smoke"}
RUNS = tuple(SCHEMES.values())
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run_report(root: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tff_prune.report",
                           f"--root_output_dir={root}"],
                          cwd=REPO, env=shell_env(), capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def finished_root(smoke_run, tmp_path_factory) -> str:
    """A root with two real finished runs (structured, unstructured) and one
    unfinished directory. Treat as read-only; copy it to write a report."""
    root = str(tmp_path_factory.mktemp("report_runs"))
    for name in RUNS:
        shutil.copytree(smoke_run(name).path, os.path.join(root, name))
    os.makedirs(os.path.join(root, "unfinished"))
    with open(os.path.join(root, "unfinished", "metrics.csv"), "w") as f:
        f.write("round,phase,train_loss\n1,dense,3.0\n")
    return root


@pytest.fixture
def root(finished_root, tmp_path) -> str:
    """A private copy of `finished_root` (the report writes into its root)."""
    copy = str(tmp_path / "root")
    shutil.copytree(finished_root, copy)
    return copy


def _png_size(path: str) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserts it is a PNG)."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, path
    return struct.unpack(">II", head[16:24])


def _cells(line: str) -> list[str]:
    """The stripped cells of one Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_cli_writes_table_and_plots_from_finished_runs(root):
    result = _run_report(root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    header = next(l for l in result.stdout.splitlines() if l.startswith("| experiment"))
    columns = _cells(header)
    assert columns == ["experiment", "mode", "scheme", "structure", "policy",
                       "distribution", "importance", "target sparsity",
                       "achieved sparsity", "WER", "CER", "params", "non-zero params",
                       "dense bytes", "sparse bytes", "bytes/round", "vs FedAvg"]
    rows = {cells[0]: dict(zip(columns, cells)) for cells in
            (_cells(l) for l in result.stdout.splitlines()
             if l.startswith("| ") and l != header)}
    assert set(rows) == set(RUNS)
    assert rows[SCHEMES["structured"]]["structure"] == "column"
    assert rows[SCHEMES["unstructured"]]["structure"] == "—"
    for row in rows.values():
        assert row["target sparsity"] == "0.50" and row["params"] != "—"
        assert row["bytes/round"].endswith("B") and float(row["WER"]) >= 0
    assert "unfinished" in result.stdout and "no summary.json" in result.stdout
    markdown = open(os.path.join(root, "report.md")).read()
    assert header in markdown and "Bytes/round: the mean over rounds" in markdown
    for name in ("wer_vs_round.png", "wer_vs_sparsity.png"):
        path = os.path.join(root, name)
        assert os.path.getsize(path) > 1000 and min(_png_size(path)) > 100
        assert f"]({name})" in markdown
    assert not os.path.exists(os.path.join(root, "federated_vs_centralized.png"))


def test_experiments_are_read_from_summaries_and_curves(finished_root):
    experiments, notes = report.find_experiments(finished_root)
    assert [e.name for e in experiments] == list(RUNS)
    assert notes == ["skipped unfinished/: no summary.json (not finished)"]
    for exp in experiments:
        assert exp.mode == "federated" and exp.policy == "server"
        assert exp.target_sparsity == 0.5 and 0.45 < exp.achieved_sparsity <= 0.55
        assert exp.score("wer") is not None and exp.score("cer") is not None
        assert 0 < exp.nonzero_params < exp.params
        assert exp.sparse_bytes < exp.dense_bytes
        # The run recorded bytes per round: the report averages them ...
        with open(os.path.join(exp.path, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        recorded = [2 * (int(r["bytes_down_per_client"]) + int(r["bytes_up_per_client"]))
                    for r in rows]
        assert report.bytes_per_round(exp) == round(sum(recorded) / len(recorded))
        # ... and in the first round (full model, masks all ones) each client
        # received every weight (4 B) and one bit per mask entry, and sent back
        # a dense delta and its example weight.
        assert int(rows[0]["dense_bytes_per_client"]) == 4 * exp.params
        assert int(rows[0]["bytes_up_per_client"]) == 4 * exp.params + 4
        assert 4 * exp.params < int(rows[0]["bytes_down_per_client"]) < 4.2 * exp.params
        assert 0.5 < report.wire_vs_dense(exp) < 1.1
        assert [p.step for p in exp.curve] == [1, 2]


def test_federated_vs_centralized_plot_when_a_centralized_run_exists(root):
    # A centralized run's eval.csv is keyed by epoch; fake one from a real run.
    central = os.path.join(root, "central")
    shutil.copytree(os.path.join(root, SCHEMES["structured"]), central)
    summary_path = os.path.join(central, "summary.json")
    text = open(summary_path).read().replace('"mode": "federated"', '"mode": "centralized"')
    open(summary_path, "w").write(text)
    with open(os.path.join(central, "eval.csv"), "w") as f:
        f.write("epoch,loss,wer,cer,num_examples,sparsity\n1,3.0,0.9,0.5,12,0.5\n"
                "2,2.0,0.8,0.4,12,0.5\n")
    built = report.build_report(root)
    names = sorted(os.path.basename(p) for p in built.plot_paths)
    assert names == ["federated_vs_centralized.png", "wer_vs_round.png",
                     "wer_vs_sparsity.png"]
    assert all(os.path.getsize(p) > 1000 for p in built.plot_paths)
    central = next(_cells(l) for l in built.table.splitlines() if l.startswith("| central "))
    assert central[1] == "centralized" and central[-2:] == ["—", "—"]


def test_zero_finished_runs_is_a_one_line_error(tmp_path):
    os.makedirs(tmp_path / "half_done")
    os.makedirs(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "summary.json").write_text('{"config": {"mode"')
    result = _run_report(str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no finished experiments" in lines[0], result.stderr
    assert "2 unfinished or unreadable" in lines[0]
    assert not os.path.exists(tmp_path / "report.md")


def test_missing_root_is_a_one_line_error(tmp_path):
    result = _run_report(str(tmp_path / "nope"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], result.stderr


# -- task-agnostic reading, from hand-written summaries (no runs) --------------

ASR_METRICS = [
    {"name": "wer", "lower_is_better": True,
     "description": "word error rate (greedy CTC, no LM)"},
    {"name": "cer", "lower_is_better": True, "description": "character error rate"},
]
KWS_METRICS = [{"name": "accuracy", "lower_is_better": False,
                "description": "keyword accuracy"}]
LEGACY_COLUMNS = ["experiment", "mode", "scheme", "structure", "policy",
                  "distribution", "importance", "target sparsity",
                  "achieved sparsity", "WER", "CER", "params", "non-zero params",
                  "dense bytes", "sparse bytes", "bytes/round", "vs FedAvg"]
ASR_FOOTNOTE = "WER / CER: the final held-out evaluation (greedy CTC decoding, no LM)."


def _write_run(root: str, name: str, final: dict, eval_rows: list[dict],
               metrics=None, task_name=None) -> None:
    """A finished federated run (unstructured, 50%) as the library leaves it:
    summary.json (with `metrics` and `config.task_name` unless None) and eval.csv."""
    path = os.path.join(root, name)
    os.makedirs(path)
    config = {"mode": "federated",
              "pruning": {"scheme": "unstructured", "policy": "server",
                          "distribution": "uniform", "importance": "magnitude",
                          "schedule": {"target_sparsity": 0.5}},
              "federated": {"clients_per_round": 2, "total_rounds": 2}}
    if task_name is not None:
        config["task_name"] = task_name
    summary = {"config": config, "final": dict(final, sparsity=0.5),
               "model": {"params": 1000, "nonzero_params": 500,
                         "dense_bytes": 4000, "sparse_bytes": 2125}}
    if metrics is not None:
        summary["metrics"] = metrics
    with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(path, "eval.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(eval_rows[0]))
        writer.writeheader()
        writer.writerows(eval_rows)


def _asr_rows() -> list[dict]:
    return [{"round": r, "loss": 3.0 / r, "wer": 1.0 - 0.1 * r, "cer": 0.6 - 0.1 * r,
             "num_examples": 12, "sparsity": 0.25 * r} for r in (1, 2)]


def _table(built) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The header and the rows (by experiment name) of a report's table."""
    lines = built.table.splitlines()
    header = _cells(lines[0])
    rows = [dict(zip(header, _cells(l))) for l in lines[2:]]
    return header, {r["experiment"]: r for r in rows}


def test_kws_and_asr_runs_share_one_report(tmp_path):
    root = str(tmp_path)
    _write_run(root, "asr_run", {"wer": 0.75, "cer": 0.4}, _asr_rows(),
               metrics=ASR_METRICS, task_name="asr")
    _write_run(root, "kws_run", {"accuracy": 0.8125, "error_yes": 0.1, "error_no": 0.3},
               [{"round": r, "loss": 2.0 / r, "accuracy": 0.4 * r, "num_examples": 30,
                 "sparsity": 0.25 * r} for r in (1, 2)],
               metrics=KWS_METRICS, task_name="kws")
    built = report.build_report(root)
    header, rows = _table(built)
    assert header == ["task"] + LEGACY_COLUMNS[:11] + ["ACCURACY"] + LEGACY_COLUMNS[11:]
    assert rows["asr_run"]["task"] == "asr" and rows["kws_run"]["task"] == "kws"
    assert (rows["asr_run"]["WER"], rows["asr_run"]["CER"]) == ("0.750", "0.400")
    assert rows["asr_run"]["ACCURACY"] == "—"
    assert rows["kws_run"]["ACCURACY"] == "0.812"  # 0.8125 rounds half to even
    assert rows["kws_run"]["WER"] == rows["kws_run"]["CER"] == "—"
    kws = next(e for e in built.experiments if e.name == "kws_run")
    assert kws.task == "kws" and kws.headline == "accuracy"
    assert not kws.metrics[0].lower_is_better and kws.score("wer") is None
    assert [(p.step, p.value) for p in kws.curve] == [(1, 0.4), (2, 0.8)]
    names = sorted(os.path.basename(p) for p in built.plot_paths)
    assert names == ["accuracy_vs_round.png", "accuracy_vs_sparsity.png",
                     "wer_vs_round.png", "wer_vs_sparsity.png"]
    for path in built.plot_paths:
        assert os.path.getsize(path) > 1000 and min(_png_size(path)) > 100
    # Two headline metrics: one federated-vs-centralized plot each, by name.
    assert ("federated_vs_centralized_accuracy.png not written: no centralized runs "
            "with ACCURACY") in built.notes
    markdown = open(built.markdown_path).read()
    assert "](accuracy_vs_round.png)" in markdown
    assert ASR_FOOTNOTE in markdown
    assert ("ACCURACY: the final held-out evaluation (keyword accuracy; higher is "
            "better).") in markdown

    # Without the KWS run, its plots are stale: the next report removes them.
    shutil.rmtree(os.path.join(root, "kws_run"))
    built = report.build_report(root)
    header, _ = _table(built)
    assert header == LEGACY_COLUMNS
    assert sorted(os.path.basename(p) for p in built.plot_paths) == [
        "wer_vs_round.png", "wer_vs_sparsity.png"]
    assert not os.path.exists(os.path.join(root, "accuracy_vs_round.png"))
    assert not os.path.exists(os.path.join(root, "accuracy_vs_sparsity.png"))
    assert "federated_vs_centralized.png not written: no centralized runs" in built.notes


def test_summary_without_metrics_is_read_as_asr(tmp_path):
    root = str(tmp_path)
    _write_run(root, "old_run", {"wer": 0.5, "cer": 0.25}, _asr_rows())
    (exp,), notes = report.find_experiments(root)
    assert notes == []
    assert exp.task == "asr" and exp.headline == "wer"
    assert [m.name for m in exp.metrics] == ["wer", "cer"]
    assert all(m.lower_is_better for m in exp.metrics)
    assert (exp.score("wer"), exp.score("cer")) == (0.5, 0.25)
    assert [(p.step, p.value, p.sparsity) for p in exp.curve] == [
        (1, 0.9, 0.25), (2, 0.8, 0.5)]
    built = report.build_report(root)
    header, rows = _table(built)
    assert header == LEGACY_COLUMNS
    assert (rows["old_run"]["WER"], rows["old_run"]["CER"]) == ("0.500", "0.250")
    markdown = open(built.markdown_path).read()
    assert f"2. {ASR_FOOTNOTE}" in markdown and "3. Model bytes:" in markdown
    assert sorted(os.path.basename(p) for p in built.plot_paths) == [
        "wer_vs_round.png", "wer_vs_sparsity.png"]
    assert "wer_vs_round.png not written" not in " ".join(built.notes)


def test_kws_only_report_names_its_metric(tmp_path):
    root = str(tmp_path)
    _write_run(root, "kws_run", {"accuracy": 0.9}, [
        {"round": 1, "loss": 1.0, "num_examples": 30, "sparsity": 0.5}],
        metrics=KWS_METRICS, task_name="kws")
    built = report.build_report(root)
    header, rows = _table(built)
    assert header == LEGACY_COLUMNS[:9] + ["ACCURACY"] + LEGACY_COLUMNS[11:]
    assert rows["kws_run"]["ACCURACY"] == "0.900"
    # The eval.csv lacks the metric: no curve, and the note names the metric.
    assert "accuracy_vs_round.png not written: no experiment has an eval.csv with " \
        "ACCURACY" in built.notes
    assert "federated_vs_centralized.png not written: no centralized runs" in built.notes
    assert [os.path.basename(p) for p in built.plot_paths] == ["accuracy_vs_sparsity.png"]
    assert "WER" not in open(built.markdown_path).read()


def test_malformed_metrics_list_skips_the_run(tmp_path):
    root = str(tmp_path)
    _write_run(root, "good", {"wer": 0.5, "cer": 0.25}, _asr_rows(), metrics=ASR_METRICS)
    _write_run(root, "bad", {"wer": 0.5}, _asr_rows(), metrics=[{"name": "../x"}])
    experiments, notes = report.find_experiments(root)
    assert [e.name for e in experiments] == ["good"]
    assert len(notes) == 1 and notes[0].startswith("skipped bad/: ")
