"""Every preset in bazel_configs/ parses (all flags exist) and validates."""

import glob
import os

import pytest
from absl import flags

from tff_prune import experiment_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(REPO, "bazel_configs", "*.cfg")))


def test_there_are_presets():
    assert len(PRESETS) >= 10


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses_and_validates(path):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["run_experiment.py", f"--flagfile={path}"])
        config = experiment_flags.experiment_config_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    name = os.path.splitext(os.path.basename(path))[0]
    assert config.experiment_name == name
