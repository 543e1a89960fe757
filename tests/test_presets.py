"""Every preset in bazel_configs/ parses and validates; every _smoke variant runs."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from tff_prune import experiment_config
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


def _settings(config) -> dict:
    """What a run computes: its config less where it is written."""
    record = experiment_config.jsonable(dataclasses.asdict(
        dataclasses.replace(config, experiment_name="-", root_output_dir="-")))
    return record


def _smoke_groups() -> list[list[str]]:
    """Smoke variants grouped by identical settings: the smoke flags shrink
    some presets (the cohort sweep, the server policy) to the same run, and
    one run proves a group."""
    groups: dict[str, list[str]] = {}
    for path in SMOKE:
        key = json.dumps(_settings(_config(path)), sort_keys=True)
        groups.setdefault(key, []).append(path)
    return list(groups.values())


def test_smoke_groups_merge_only_identical_runs():
    groups = _smoke_groups()
    assert sorted(p for g in groups for p in g) == SMOKE
    # The pruning method of every preset is run by some group.
    methods = {json.dumps(_settings(_config(g[0]))["pruning"], sort_keys=True)
               for g in groups}
    assert len(methods) >= 9


def _cache_flags(cache) -> list[str]:
    """Every task's corpus cache under `cache` (generated once per session)."""
    return [f"--corpus_cache_dir={cache}", f"--kws_cache_dir={cache / 'kws'}"]


@pytest.mark.parametrize("group", _smoke_groups(),
                         ids=lambda g: "+".join(os.path.basename(p)[:-10] for p in g))
def test_smoke_variant_runs_end_to_end_with_its_settings(group, tmp_path_factory):
    # Exactly as a user runs a preset (in its own process, which also keeps
    # this test process's memory flat).
    path = group[0]
    cache = tmp_path_factory.getbasetemp() / "smoke_corpus"  # shared: generated once
    out = tmp_path_factory.mktemp("smoke_out")
    name = os.path.basename(path)[:-4]
    result = subprocess.run(
        [sys.executable, "run_experiment.py", f"--flagfile=bazel_configs/{name}.cfg",
         *_cache_flags(cache), f"--root_output_dir={out}"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / name / "summary.json") as f:
        summary = json.load(f)
    headline = summary["metrics"][0]["name"]  # wer (ASR), accuracy (KWS)
    assert f"held-out {headline.upper()}" in result.stdout
    # The run used the preset's settings (scheme, structure, importance,
    # allocation, policy, schedule, cohort, mode...), for every preset of the group.
    ran = {k: v for k, v in summary["config"].items()
           if k not in ("experiment_name", "root_output_dir")}
    for member in group:
        settings = _settings(_config(member, *_cache_flags(cache)))
        expected = {k: v for k, v in json.loads(json.dumps(settings)).items()
                    if k not in ("experiment_name", "root_output_dir")}
        assert ran == expected, member
    assert 0.0 <= summary["final"]["cer" if headline == "wer" else headline] <= 2.0
    if summary["config"]["pruning"]["scheme"] != "none":
        assert summary["final"]["sparsity_per_layer"]["overall"] > 0.2


def test_client_batch_size_defaults_to_the_tasks_and_a_flag_overrides_it():
    asr = os.path.join(REPO, "bazel_configs", "fedprune_structured.cfg")
    kws = os.path.join(REPO, "bazel_configs", "kws_structured.cfg")
    assert _config(asr).task.model.batch_size == 2  # bench/results/convergence_schedules.md
    assert _config(kws).task.model.batch_size == 8
    assert _config(asr, "--client_batch_size=8").task.model.batch_size == 8
    # Centralized runs keep their own batch.
    assert _config(asr, "--mode=centralized").task.model.batch_size == 16
    with pytest.raises(experiment_config.config_lib.ConfigError, match="batch size"):
        _config(asr, "--client_batch_size=0")
