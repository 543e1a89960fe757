"""Every preset in bazel_configs/ parses and validates; every _smoke variant
runs, and does what its preset is for.

A smoke run proves a preset only if it checks the preset's own point: the
final sparsity is the target, the masks have the preset's pattern (whole
columns, rows, half columns, 1x4 blocks, 2:4 groups, scattered weights), the
allocation differs from uniform where the preset says so, the policy and the
importance act. The runs are the session's shared smoke runs
(`conftest.smoke_run`), which test_report and test_bench_smoke read too.
"""

import dataclasses
import glob
import json
import math
import os

import numpy as np
import pytest

from conftest import preset_config
from tff_prune.program import experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = sorted(glob.glob(os.path.join(REPO, "bazel_configs", "*.cfg")))
PRESETS = [p for p in ALL if not p.endswith("_smoke.cfg")]
SMOKE = [p for p in ALL if p.endswith("_smoke.cfg")]


def _name(path: str) -> str:
    return os.path.basename(path)[:-4]


def test_every_preset_has_a_smoke_variant():
    assert len(PRESETS) >= 12
    assert {_name(p) + "_smoke.cfg" for p in PRESETS} == {os.path.basename(p) for p in SMOKE}


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses_and_validates(path):
    config = preset_config(path)
    assert config.experiment_name == _name(path)


def _settings(config) -> dict:
    """What a run computes: its config less where it is written."""
    return experiment_config.jsonable(dataclasses.asdict(
        dataclasses.replace(config, experiment_name="-", root_output_dir="-")))


def _smoke_groups() -> list[list[str]]:
    """Smoke variants grouped by identical settings: the smoke flags shrink
    some presets (the cohort sweep, the server policy) to the same run, and
    one run proves a group."""
    groups: dict[str, list[str]] = {}
    for path in SMOKE:
        key = json.dumps(_settings(preset_config(path)), sort_keys=True)
        groups.setdefault(key, []).append(path)
    return list(groups.values())


GROUPS = _smoke_groups()


def test_smoke_groups_merge_only_identical_runs():
    assert sorted(p for g in GROUPS for p in g) == SMOKE
    # The pruning method of every preset is run by some group.
    methods = {json.dumps(_settings(preset_config(g[0]))["pruning"], sort_keys=True)
               for g in GROUPS}
    assert len(methods) >= 9
    # Groups hold only runs whose settings are the same, member for member.
    for group in GROUPS:
        assert len({json.dumps(_settings(preset_config(p)), sort_keys=True)
                    for p in group}) == 1


# -- what each preset is for ---------------------------------------------------------

# Smoke run (one per group) -> (mask pattern, target sparsity). The pattern
# is read from the final model's exact zeros.
EXPECTED = {
    "centralized_dense_smoke": ("dense", 0.0),
    "centralized_pruning_smoke": ("column", 0.5),
    "fedavg_dense_smoke": ("dense", 0.0),
    "fedprune_block_smoke": ("block1x4", 0.5),
    "fedprune_half_column_smoke": ("half_column", 0.5),
    "fedprune_half_row_smoke": ("half_row", 0.5),
    "fedprune_m_by_n_smoke": ("2:4", 0.5),
    "fedprune_row_smoke": ("row", 0.5),
    "fedprune_structured_25_smoke": ("column", 0.25),
    "fedprune_structured_75_smoke": ("column", 0.75),
    # = cohort_5, cohort_20, policy_server at smoke size (the report reads it too).
    "fedprune_structured_smoke": ("column", 0.5),
    "fedprune_structured_adaptive_smoke": ("column", 0.5),
    "fedprune_structured_global_smoke": ("column", 0.5),
    "fedprune_unstructured_smoke": ("unstructured", 0.5),
    "importance_taylor_smoke": ("column", 0.5),
    "kws_structured_smoke": ("column", 0.5),
    "policy_client_vote_smoke": ("column", 0.5),
    "policy_fixed_smoke": ("column", 0.5),
}
# How close to its target a preset's final sparsity must be: the allocation
# cuts whole units, as close as they allow. One column unit of the KWS smoke
# model (tiny DS-CNN, 16 channels per layer) holds 56 of its 1,152 covered
# kernel weights (4.9%); its nearest cut to 50% is 47.9%.
SPARSITY_TOLERANCE = {"kws_structured_smoke": 0.03}
# The uniform column run the allocation and importance presets are compared with.
UNIFORM = "fedprune_structured_smoke"


def _representative(group: list[str]) -> str:
    """The member of a group that runs (the one `EXPECTED` names)."""
    (name,) = [_name(p) for p in group if _name(p) in EXPECTED]
    return name


def test_every_smoke_group_has_one_expectation():
    assert sorted(_representative(g) for g in GROUPS) == sorted(EXPECTED)


def _views(kernels: dict) -> dict:
    """Each 2-D-or-more kernel as its [inputs..., outputs] matrix (units' 2-D view)."""
    return {k: v.reshape(-1, v.shape[-1]) for k, v in kernels.items() if v.ndim >= 2}


def _zero_lines(zero: np.ndarray):
    return zero.all(axis=1), zero.all(axis=0)  # rows, columns


def assert_pattern(kernels: dict, pattern: str) -> None:
    """The zeros of the pruned kernels have `pattern` (and not a coarser one)."""
    views = {k: v for k, v in _views(kernels).items() if (v == 0).any()}
    if pattern == "dense":
        assert not views, sorted(views)
        return
    assert views, "no kernel has a pruned weight"
    unexplained = 0
    for key, view in views.items():
        zero = view == 0
        rows, cols = _zero_lines(zero)
        lines = rows[:, None] | cols[None, :]
        if pattern in ("column", "row"):
            # Structured: every zero is in a pruned row (input) or column (output).
            assert (zero == lines).all(), key
        unexplained += int((zero & ~lines).sum())
        if pattern in ("half_column", "half_row"):
            axis_len = view.shape[0] if pattern == "half_column" else view.shape[1]
            half = -(-axis_len // 2)  # the first half gets an odd length's extra element
            lines_of = view if pattern == "half_column" else view.T  # halves of columns
            z = lines_of == 0
            for part in (z[:half], z[half:]):
                assert (part.all(axis=0) | ~part.any(axis=0)).all(), key
        if pattern == "block1x4":
            full = view.shape[1] // 4 * 4  # a partial edge tile is not checked
            tiles = zero[:, :full].reshape(view.shape[0], -1, 4)
            assert (tiles.all(axis=2) | ~tiles.any(axis=2)).all(), key
        if pattern == "2:4":
            # 2 of every 4 consecutive inputs (the kernel's axis -2), per output.
            z = np.moveaxis(kernels[key] == 0, -2, -1)
            groups = z.shape[-1] // 4
            counts = z[..., :groups * 4].reshape(*z.shape[:-1], groups, 4).sum(axis=-1)
            assert (counts == 2).all(), key
    if pattern in ("unstructured", "block1x4", "2:4", "half_column", "half_row"):
        # Finer than whole rows and columns: some zeros are in neither.
        assert unexplained > 0, pattern
    if pattern in ("column", "row"):
        assert unexplained == 0
        # Which lines: column pruning removes ff hidden units (columns) and
        # never a residual-stream input (a row of ff1_in); row pruning does.
        ff_in = _residual_input_kernels(kernels)
        rows_pruned = any((v == 0).all(axis=1).any() for v in ff_in.values())
        if ff_in and pattern == "column":
            assert all((v == 0).all(axis=0).any() for v in ff_in.values())
            assert not rows_pruned
        if ff_in and pattern == "row":
            assert rows_pruned


def _residual_input_kernels(kernels: dict) -> dict:
    """The ASR feed-forward input kernels: rows are the residual stream."""
    return {k: v for k, v in kernels.items() if k.endswith("ff1_in")}


def _sparsities(run) -> dict:
    per_layer = run.summary["final"]["sparsity_per_layer"]
    return {k: v for k, v in per_layer.items() if k != "overall"}


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: "+".join(_name(p)[:-6] for p in g))
def test_smoke_variant_runs_and_does_what_its_preset_is_for(group, smoke_run):
    name = _representative(group)
    pattern, target = EXPECTED[name]
    run = smoke_run(name)
    summary = run.summary
    config = summary["config"]
    # The run is the preset's: same settings as the flagfile says (less
    # where it is written and its caches).
    assert config["experiment_name"] == name
    assert config["pruning"] == _settings(preset_config(group[0]))["pruning"]
    assert config["mode"] == _settings(preset_config(group[0]))["mode"]
    headline = summary["metrics"][0]["name"]  # wer (ASR), accuracy (KWS)
    assert math.isfinite(summary["final"][headline])
    # The target sparsity, measured on the final model's masks.
    assert summary["final"]["sparsity"] == pytest.approx(
        target, abs=SPARSITY_TOLERANCE.get(name, 0.02))
    kernels = run.kernels()
    assert_pattern(kernels, pattern)
    if pattern == "dense":
        return
    # The reported figure is the weights' own: zeros in the covered kernels.
    covered = [kernels[k.split("/")[0]] for k in _sparsities(run)]
    zeros = sum(int((k == 0).sum()) for k in covered) / sum(k.size for k in covered)
    assert zeros == pytest.approx(summary["final"]["sparsity"], abs=0.01)
    if summary["config"]["task_name"] == "asr":
        assert _residual_input_kernels(kernels)  # the column/row check above applied
    rows = run.csv("metrics.csv")
    if config["mode"] == "federated":
        assert len(rows) == config["federated"]["total_rounds"]
        updated = [int(r["masks_updated"]) for r in rows]
        votes = [float(r["vote_agreement"]) for r in rows]
        policy = config["pruning"]["policy"]
        if policy == "fixed":
            # Decided once at the first pruning round, at the target, then frozen.
            assert updated == [1, 0]
            assert float(rows[0]["sparsity"]) == pytest.approx(target, abs=0.02)
        elif len(rows) == 1:
            # One round (common/smoke_one_round.flags): one decision, at the target.
            assert updated == [1]
            assert float(rows[0]["sparsity"]) == pytest.approx(target, abs=0.02)
        else:
            # A step schedule over two rounds: half the target, then the target.
            assert updated == [1, 1]
            assert float(rows[0]["sparsity"]) < float(rows[1]["sparsity"])
        if policy == "client_vote":
            # The clients' votes decided the masks: their agreement is recorded.
            assert all(0.0 < v <= 1.0 for v in votes), votes
        else:
            assert all(math.isnan(v) for v in votes), votes


@pytest.mark.parametrize("name", ["fedprune_structured_adaptive_smoke",
                                  "fedprune_structured_global_smoke"])
def test_non_uniform_allocation_gives_other_per_layer_sparsities(name, smoke_run):
    uniform, other = _sparsities(smoke_run(UNIFORM)), _sparsities(smoke_run(name))
    assert uniform.keys() == other.keys()
    differences = [abs(uniform[k] - other[k]) for k in uniform]
    assert max(differences) > 0.1, differences
    # ... and the layers' spread is wider than uniform's.
    assert np.std(list(other.values())) > np.std(list(uniform.values()))


def test_taylor_importance_keeps_other_units_than_magnitude(smoke_run):
    magnitude = smoke_run(UNIFORM).kernels()
    taylor = smoke_run("importance_taylor_smoke").kernels()
    differ = [k for k in magnitude if magnitude[k].ndim >= 2 and
              ((magnitude[k] == 0) != (taylor[k] == 0)).any()]
    assert differ


def test_client_batch_size_defaults_to_the_tasks_and_a_flag_overrides_it():
    asr = os.path.join(REPO, "bazel_configs", "fedprune_structured.cfg")
    kws = os.path.join(REPO, "bazel_configs", "kws_structured.cfg")
    assert preset_config(asr).task.model.batch_size == 2  # bench/results/convergence_schedules.md
    assert preset_config(kws).task.model.batch_size == 8
    assert preset_config(asr, "--client_batch_size=8").task.model.batch_size == 8
    # Centralized runs keep their own batch.
    assert preset_config(asr, "--mode=centralized").task.model.batch_size == 16
    with pytest.raises(experiment_config.config_lib.ConfigError, match="batch size"):
        preset_config(asr, "--client_batch_size=0")
