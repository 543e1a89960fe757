"""Round-based pruning schedules (tff_prune.pruning.schedule)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from tff_prune.pruning.schedule import PHASES, PruningSchedule


def make(**overrides):
    args = dict(kind="polynomial", target_sparsity=0.8, begin_round=4, end_round=16, every_rounds=3,
                refine_rounds=6, initial_sparsity=0.0, power=3)
    args.update(overrides)
    return PruningSchedule(**args)


@pytest.mark.parametrize("overrides,message", [
    (dict(kind="cosine"), "kind"),
    (dict(target_sparsity=1.0), "target_sparsity"),
    (dict(target_sparsity=-0.1), "target_sparsity"),
    (dict(initial_sparsity=1.5), "initial_sparsity"),
    (dict(begin_round=-1), "begin_round"),
    # Rounds start at 1: a schedule beginning at round 0 would never prune.
    (dict(begin_round=0, end_round=0, every_rounds=1), "begin_round must be >= 1"),
    (dict(end_round=2), "end_round"),
    (dict(every_rounds=0), "every_rounds"),
    (dict(refine_rounds=-2), "refine_rounds"),
    (dict(end_round=15), "multiple of every_rounds"),
    (dict(power=0), "power"),
    (dict(begin_round=1.5), "begin_round must be an int"),
    (dict(initial_sparsity=0.9), "initial_sparsity .* must be <= target_sparsity"),
])
def test_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_validation_reports_every_bad_value_on_its_own_line():
    with pytest.raises(ValueError) as info:
        make(target_sparsity=2.0, every_rounds=0, refine_rounds=-1)
    lines = str(info.value).splitlines()
    assert sum(("target_sparsity" in l) for l in lines) == 1
    assert any("every_rounds" in l for l in lines) and any("refine_rounds" in l for l in lines)


def test_phases_and_update_rounds():
    s = make()
    phases = [s.phase(r) for r in range(30)]
    assert phases[:4] == ["dense"] * 4
    assert phases[4:17] == ["pruning"] * 13
    assert phases[17:23] == ["refinement"] * 6
    assert phases[23:] == ["finetune"] * 7
    updates = [r for r in range(30) if s.should_update_masks(r)]
    assert updates == [4, 7, 10, 13, 16, 19, 22] == s.update_rounds()
    assert s.num_updates == 5 and s.last_mask_round == 22


def test_constant():
    s = make(kind="constant", initial_sparsity=0.3)
    assert [s.sparsity(r) for r in (0, 3, 4, 5, 16, 20, 40)] == [0.0, 0.0, 0.8, 0.8, 0.8, 0.8, 0.8]


def test_step_increments():
    s = make(kind="step", target_sparsity=0.5)
    values = [s.sparsity(r) for r in range(4, 17)]
    np.testing.assert_allclose(values, np.repeat([0.1, 0.2, 0.3, 0.4], 3).tolist() + [0.5])
    assert s.sparsity(3) == 0.0 and s.sparsity(25) == 0.5
    one_shot = make(kind="step", begin_round=5, end_round=5, refine_rounds=0)
    assert one_shot.sparsity(5) == 0.8 and one_shot.phase(6) == "finetune"


def test_polynomial_matches_tfmot_and_holds_between_updates():
    s = make(initial_sparsity=0.1)
    theirs = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.1, final_sparsity=0.8, begin_step=4,
                                                  end_step=16, power=3, frequency=3)
    for r in range(0, 30):
        should, value = theirs(tf.constant(r, tf.int64))
        if 4 <= r <= 16:
            assert bool(should) == s.should_update_masks(r)
        last_update = max([u for u in range(4, 17, 3) if u <= r], default=None)
        if last_update is None:
            assert s.sparsity(r) == 0.0
        else:
            expected = float(theirs(tf.constant(last_update, tf.int64))[1])
            assert s.sparsity(r) == pytest.approx(expected, abs=1e-6), r
    assert s.sparsity(4) == pytest.approx(0.1) and s.sparsity(16) == pytest.approx(0.8)


@pytest.mark.parametrize("kind", ["constant", "step", "polynomial"])
def test_tensor_versions_match_python(kind):
    s = make(kind=kind, initial_sparsity=0.05 if kind != "constant" else 0.0)

    @tf.function
    def fn(r):
        return s.phase(r), s.phase_index(r), s.should_update_masks(r), s.sparsity(r)

    for r in range(0, 30):
        phase, index, update, sparsity = fn(tf.constant(r, tf.int32))
        assert phase.numpy().decode() == s.phase(r) == PHASES[int(index)]
        assert bool(update) == s.should_update_masks(r)
        assert float(sparsity) == pytest.approx(s.sparsity(r), abs=1e-6)
        assert sparsity.dtype == tf.float32
