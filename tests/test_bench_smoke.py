"""The bench scripts run and write well-formed tables (smoke runs, micro model).

Each bench's `main` runs in this process (the import is paid once); the
rows it measures still run in their own processes, as in a real bench.
Timing goals are never asserted here: they are ratios for `bench/results/`.
"""

import json
import math
import shutil

import pytest


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    """One synthetic corpus cache for the module's bench runs (synthesized once)."""
    return tmp_path_factory.mktemp("bench_corpus")


def test_round_costs_quick_writes_its_table(tmp_path, corpus_cache):
    out = tmp_path / "round_costs"
    from bench import round_costs
    assert round_costs.main(
        ["--quick", "--model_size=micro", "--clients=1", "--repeats=1", "--skip_client_cost",
         "--num_train_speakers=4", f"--cache_dir={corpus_cache}",
         f"--out={out}", f"--work_dir={tmp_path / 'work'}"]) == 0
    data = json.loads((tmp_path / "round_costs.json").read_text())
    names = [r["variant"] for r in data["rows"]]
    steps = ["client steps: dense", "client steps: masked, column 50%",
             "client steps: compact, column 50%", "client steps: compact, column 75%"]
    assert names == ["dense (ours, --pruning=none)", "compact, column 50%",
                     "floor: dense (ours, --pruning=none)", "floor: compact, column 50%",
                     *steps]
    dense, compact, dense_floor, compact_floor = data["rows"][:4]
    assert dense["down_vs_dense"] == 1.0 and compact["down_vs_dense"] < 0.8
    # The floor rounds are the same computations (same wire), whose clients
    # trained on nothing; the rounds they stand beside trained on the data.
    assert dense["examples_per_round"] > 0 and compact["examples_per_round"] > 0
    assert dense_floor["examples_per_round"] == compact_floor["examples_per_round"] == 0
    assert dense_floor["bytes_down"] == dense["bytes_down"]
    assert compact_floor["bytes_down"] == compact["bytes_down"]
    # The clients' steps without TFF train on the round's own examples.
    for row in data["rows"][4:]:
        assert row["examples_per_round"] == dense["examples_per_round"], row["variant"]
    assert data["rows"][4]["steps_vs_dense"] == 1.0
    text = (tmp_path / "round_costs.md").read_text()
    rounds, client_steps = text.split("## The clients' own steps")
    table = [l for l in rounds.splitlines() if l.startswith("|")]
    assert len(table) == 2 + 4 and len({l.count("|") for l in table}) == 1
    table = [l for l in client_steps.splitlines() if l.startswith("|")]
    assert len(table) == 2 + len(steps) and len({l.count("|") for l in table}) == 1
    assert "compact, column 50%: bytes ≤ 0.55× dense" in text
    assert "compact, column 50%: the client's own steps ≤ 0.65× dense" in text
    assert "* compact, column 50%: " in text.split("## Orchestration floor")[1]


def _table_rows(path):
    table = [l for l in path.read_text().splitlines() if l.startswith("|")]
    assert len({l.count("|") for l in table}) == 1, table  # one width: well formed
    return table[2:]


def test_pruning_overhead_quick_writes_its_table(tmp_path, corpus_cache):
    out = tmp_path / "pruning_overhead"
    from bench import pruning_overhead
    assert pruning_overhead.main(
        ["--quick", "--model_size=micro", "--clients=1", "--repeats=1",
         "--num_train_speakers=4", f"--cache_dir={corpus_cache}", f"--out={out}",
         f"--work_dir={tmp_path / 'work'}"]) == 0
    data = json.loads((tmp_path / "pruning_overhead.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["structured column / server"]
    assert all(r["error"] is None and r["window_seconds_median"] > 0
               and r["none_window_seconds_median"] > 0 for r in data["rows"])
    assert len(_table_rows(tmp_path / "pruning_overhead.md")) == 1


def test_scaling_writes_its_table_and_slope(tmp_path, corpus_cache):
    out = tmp_path / "scaling"
    from bench import scaling
    assert scaling.main(
        ["--model_sizes=micro", "--cohorts=1,2", "--repeats=1", "--num_train_speakers=4",
         f"--cache_dir={corpus_cache}", f"--out={out}", f"--work_dir={tmp_path / 'work'}"]) == 0
    data = json.loads((tmp_path / "scaling.json").read_text())
    assert [r["cohort"] for r in data["rows"]] == [1, 2]
    assert all(r["worker_peak_rss_mib"] > 0 for r in data["rows"])
    # A slope is reported (its sign is timing: never asserted here).
    fit = data["fits"]["micro"]
    assert all(math.isfinite(fit[k]) for k in ("seconds_per_client", "rss_mib_per_client"))
    assert len(_table_rows(tmp_path / "scaling.md")) == 2


def test_findings_judges_finished_runs_and_writes_the_table(tmp_path, smoke_run):
    # The session's smoke runs of the arms' presets, where a stopped bench
    # would have left them; `--collect` judges them without running anything.
    # (Running arms is bench.runs.run_experiment, which the convergence smoke
    # test below runs for real.)
    from bench import findings
    work = tmp_path / "work"
    for arm, preset in (("dense", "fedavg_dense_smoke"), ("column_50", "fedprune_structured_smoke")):
        shutil.copytree(smoke_run(preset).path, work / "findings" / f"{arm}_seed0")
    out = tmp_path / "findings"
    assert findings.main(["--collect", "--quick", "--arms=dense,column_50,column_75",
                          f"--work_dir={work}", f"--out={out}"]) == 0
    data = json.loads((tmp_path / "findings.json").read_text())
    arms = {a["name"]: a for a in data["arms"]}
    assert set(arms) == {"dense", "column_50"}  # column_75 has no finished run
    assert arms["column_50"]["preset"] == "fedprune_structured"
    # Each arm's row is its run's: the pruned one pruned, the dense one not.
    for arm, preset in (("dense", "fedavg_dense_smoke"), ("column_50", "fedprune_structured_smoke")):
        (row,) = arms[arm]["runs"]
        final = smoke_run(preset).summary["final"]
        assert row["seed"] == 0
        assert row["cer"] == final["cer"] and row["sparsity"] == final["sparsity"]
    assert arms["dense"]["runs"][0]["sparsity"] == 0.0
    assert arms["column_50"]["runs"][0]["sparsity"] == pytest.approx(0.5, abs=0.02)
    # Only the findings whose arms ran are judged: "50% ≈ dense".
    (finding,) = data["findings"]
    assert finding["arm"] == "column_50" and finding["other"] == "dense"
    cers = [arms[n]["runs"][0]["cer"] for n in ("column_50", "dense")]
    assert finding["ratio"] == pytest.approx(cers[0] / cers[1])
    claim = next(f for f in findings.FINDINGS if f.arm == "column_50" and f.other == "dense")
    assert finding["verdict"] == findings.judge(
        claim, {n: arms[n]["runs"] for n in arms}, data["similar_within"])["verdict"]
    # Two well-formed tables: the findings judged, then every arm.
    tables = [[l for l in block.splitlines() if l.startswith("|")]
              for block in (tmp_path / "findings.md").read_text().split("\n\n")]
    tables = [t for t in tables if t]
    assert [len(t) - 2 for t in tables] == [1, 2]
    assert all(len({l.count("|") for l in t}) == 1 for t in tables)
    assert (tmp_path / "findings_wer_vs_sparsity.png").stat().st_size > 1000
    assert data["wall_seconds"] is None  # nothing ran


def _arm_runs(cers):
    return [{"seed": s, "cer": c} for s, c in enumerate(cers)]


def test_findings_verdicts_pair_the_seeds():
    from bench import findings
    better = findings.Finding("a beats b", "", "better", "a", "b")
    results = {"a": _arm_runs([0.30, 0.40]), "b": _arm_runs([0.35, 0.45])}
    assert findings.judge(better, results, 0.1)["verdict"] == "holds"
    results["b"] = _arm_runs([0.25, 0.35])
    assert findings.judge(better, results, 0.1)["verdict"] == "does not hold"
    # Better on average but not on every seed: the seeds disagree.
    results["b"] = _arm_runs([0.50, 0.39])
    assert findings.judge(better, results, 0.1)["verdict"] == "within seed noise"
    similar = findings.Finding("a ≈ b", "", "similar", "a", "b")
    results["b"] = _arm_runs([0.33, 0.37])
    row = findings.judge(similar, results, 0.1)
    assert row["ratio"] == pytest.approx(1.0) and row["verdict"] == "holds"
    results["b"] = _arm_runs([0.20, 0.30])
    assert findings.judge(similar, results, 0.1)["verdict"] == "does not hold"
    # Pruning cost: CER pruned / CER dense of each kind of training, per seed.
    cheaper = findings.Finding("fed cheaper", "", "cheaper_pruning", "a", "b", "ad", "bd")
    results = {"a": _arm_runs([0.30, 0.40]), "ad": _arm_runs([0.25, 0.35]),
               "b": _arm_runs([0.20, 0.22]), "bd": _arm_runs([0.10, 0.11])}
    row = findings.judge(cheaper, results, 0.1)
    assert row["arm_values"] == pytest.approx([1.2, 0.40 / 0.35])
    assert row["other_values"] == pytest.approx([2.0, 2.0])
    assert row["verdict"] == "holds"
    # An arm that did not run: no verdict.
    del results["bd"]
    assert findings.judge(cheaper, results, 0.1) is None


def test_a_run_diverged_in_its_first_round_trained_on_nothing(tmp_path):
    from bench import runs
    from tff_prune.program import divergence
    run_dir = tmp_path / "diverged"
    run_dir.mkdir()
    divergence.write_record(str(run_dir), divergence.DivergedError("diverged", 1))
    # No metrics.csv, no eval.csv, no summary: the round never finished.
    run = runs.load_diverged_run("diverged", str(run_dir), 3.0)
    assert run.diverged["round"] == 1 and run.summary == {}
    assert run.metrics == [] and run.examples_trained == 0
    assert run.eval_column("cer") == []


def test_findings_never_score_a_diverged_run():
    from bench import findings
    better = findings.Finding("a beats b", "", "better", "a", "b")
    results = {"a": _arm_runs([0.30, 0.40]), "b": _arm_runs([0.35, 0.20])}
    # Seed 1 of b diverged (its CER would have decided "within seed noise").
    results["b"][1] = {"seed": 1, "cer": None, "diverged_round": 7}
    row = findings.judge(better, results, 0.1)
    assert row["seeds"] == [0] and row["verdict"] == "holds"
    assert row["diverged"] == ["b seed 1 (round 7)"]
    results["a"][0] = {"seed": 0, "cer": None, "diverged_round": 3}
    row = findings.judge(better, results, 0.1)
    assert row["seeds"] == [] and row["verdict"] == "not judged: diverged"
    # The arm's table cell: the finished seeds' spread, the diverged counted.
    assert findings._spread([0.35, None]) == "35.0% (1 diverged)"  # pylint: disable=protected-access
    assert findings._spread([None]) == "diverged"  # pylint: disable=protected-access


def test_convergence_quick_compares_a_seed_model_setting_with_centralized_and_records_divergence(
        tmp_path, corpus_cache, monkeypatch):
    out = tmp_path / "convergence"
    from bench import convergence
    # A setting that diverges (what a new user tries: its one step of round 1
    # trains from the initial model, round 2's loss explodes), swept first: it
    # is recorded as diverged, never scored or ranked, and the bench goes on
    # (before, the sweep stopped at the failed run).
    monkeypatch.setitem(convergence.VARIANTS, "client_sgd_1e6", (
        "client SGD 1e6", ["--client_optimizer=sgd", "--client_learning_rate=1e6"]))
    assert convergence.main(
        ["--quick", "--variants=client_sgd_1e6,fedavg_seed_model",
         f"--corpus_cache_dir={corpus_cache}",
         f"--feature_cache_dir={corpus_cache / 'features'}", f"--out={out}",
         f"--work_dir={tmp_path / 'work'}"]) == 0
    data = json.loads((tmp_path / "convergence.json").read_text())
    diverged, row = data["variants"]
    assert diverged["diverged_round"] == 2 and [r for r, _ in diverged["cer"]] == [1]
    assert diverged["cer_vs_centralized"] is None
    assert 0 < diverged["examples"] < row["examples"]  # the rounds before it
    assert row["diverged_round"] is None
    assert row["name"] == data["best"] == "fedavg_seed_model"
    assert [r for r, _ in row["cer"]] == [1, 2]
    # It started from the seed model the bench trained on the public speakers.
    work = tmp_path / "work" / "convergence"
    config = json.loads((work / "fedavg_seed_model" / "config.json").read_text())
    assert config["federated.initial_model"] == str(work / "seed_model")
    seed_config = json.loads((work / "seed_model" / "config.json").read_text())
    assert seed_config["task.corpus.train_split"] == "public"
    assert data["seed_model"]["public_speakers"] == 2 and data["seed_model"]["cer"]
    # The centralized reference trained on as many examples as the federated run.
    assert data["centralized"]["examples"] == row["examples"]
    table = _table_rows(tmp_path / "convergence.md")
    assert len(table) == 2
    assert "diverged at round 2" in table[0] and "diverged" not in table[1]


def test_findings_merge_judges_side_by_side_benches_as_one(tmp_path):
    # One bench per seed (`--seeds=0`, `--seeds=1`), merged: the findings
    # pair the seeds across the two files.
    from bench import findings
    parts = []
    for seed, (dense, pruned) in enumerate([(0.50, 0.52), (0.49, 0.60)]):
        part = {"scale": findings.SCALE, "quick": False, "wall_seconds": 100.0 + seed,
                "arms": [{"name": "dense", "runs": [{"seed": seed, "cer": dense,
                                                      "wer": 1.0, "sparsity": 0.0,
                                                      "examples": 6000,
                                                      "train_seconds": 60.0}]},
                         {"name": "column_50", "runs": [{"seed": seed, "cer": pruned,
                                                          "wer": 1.0, "sparsity": 0.5,
                                                          "examples": 6000,
                                                          "train_seconds": 60.0}]}]}
        path = tmp_path / f"part{seed}.json"
        path.write_text(json.dumps(part))
        parts.append(str(path))
    out = tmp_path / "merged"
    assert findings.main([f"--merge={','.join(parts)}", f"--out={out}",
                          f"--work_dir={tmp_path / 'work'}"]) == 0
    data = json.loads((tmp_path / "merged.json").read_text())
    assert data["seeds"] == [0, 1] and data["processes"] == 2
    assert data["wall_seconds"] == 101.0
    (row,) = data["findings"]
    assert row["seeds"] == [0, 1] and row["arm_values"] == [0.52, 0.60]
    assert row["ratio"] == pytest.approx(0.56 / 0.495)
    assert row["verdict"] == "does not hold"


def test_step_profile_puts_each_ops_time_on_its_layer():
    # The profile of a real step: a wide layer and a narrow one, forward and
    # gradient ops; the wide one (64x more FLOPs) must get the most time.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from bench import step_profile  # pylint: disable=import-outside-toplevel

    inputs = tf.keras.Input(shape=(256,))
    wide = tf.keras.layers.Dense(2048, name="wide")(inputs)
    outputs = tf.keras.layers.Dense(32, name="narrow")(wide)
    model = tf.keras.Model(inputs, outputs)

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(batch)))
        return tape.gradient(loss, model.trainable_weights)[0]

    batch = tf.random.normal([512, 256])
    step(batch)
    per_layer = step_profile.profile(step, batch, steps=2)
    assert per_layer["wide"] > per_layer["narrow"] > 0
    assert step_profile.layer_of("gradient_tape/conformer_ctc/prune_low_magnitude_block3_ff1_in/"
                                 "Tensordot/MatMul") == "blockN_ff1_in"
