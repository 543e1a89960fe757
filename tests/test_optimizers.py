"""Server optimizers and learning-rate schedules over rounds (`tff_prune.federated.optimizers`)."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import optimizers
from tff_prune.federated import process as process_lib
from tff_prune.program import experiment_config
from tff_prune.pruning import config as config_lib


def test_schedules_give_the_documented_rates():
    constant = optimizers.LearningRateSchedule("constant", base=0.1, total_rounds=10)
    assert [constant(r) for r in (1, 5, 10)] == pytest.approx([0.1] * 3)
    assert constant.is_constant
    exponential = optimizers.LearningRateSchedule(
        "exponential", base=0.1, warmup_rounds=2, decay_rate=0.5, total_rounds=10)
    # Warm-up r / (w + 1), then base * rate ** (r - w - 1).
    assert [exponential(r) for r in (1, 2, 3, 4, 6)] == pytest.approx(
        [0.1 / 3, 0.2 / 3, 0.1, 0.05, 0.0125])
    cosine = optimizers.LearningRateSchedule(
        "warmup_cosine", base=0.1, warmup_rounds=1, total_rounds=5)
    span = 4
    assert [cosine(r) for r in (1, 2, 3, 5)] == pytest.approx(
        [0.05, 0.1, 0.05 * (1 + math.cos(math.pi / span)),
         0.05 * (1 + math.cos(3 * math.pi / span))])
    # The graph form (what the server optimizer runs) is the same function.
    for schedule in (exponential, cosine):
        graph = tf.function(schedule)
        for r in range(1, 6):
            assert float(graph(tf.constant(r, tf.int64))) == pytest.approx(schedule(r))


@pytest.mark.parametrize("flags,message", [
    (dict(client_lr_schedule="linear"), "--client_lr_schedule='linear' is not one of"),
    (dict(server_lr_schedule="exponential", server_lr_decay_rate=1.5),
     r"--server_lr_decay_rate must be in \(0, 1\]"),
    (dict(client_lr_warmup_rounds=-1), "--client_lr_warmup_rounds must be >= 0"),
    (dict(server_lr_schedule="warmup_cosine", server_lr_warmup_rounds=5, total_rounds=5),
     "--server_lr_warmup_rounds"),
    (dict(server_momentum=1.0), "--server_momentum"),
])
def test_bad_optimizer_flags_are_refused_naming_the_flag(flags, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        experiment_config.FederatedConfig(**flags)


def test_scheduled_server_optimizer_steps_at_the_rate_of_each_round():
    schedule = optimizers.LearningRateSchedule(
        "exponential", base=1.0, warmup_rounds=1, decay_rate=0.5, total_rounds=5)
    optimizer = optimizers.scheduled(tff.learning.optimizers.build_sgdm(1.0), schedule)
    weights = (tf.constant([1.0, -2.0]),)
    gradient = (tf.constant([0.5, 0.25]),)
    state = optimizer.initialize((tf.TensorSpec([2], tf.float32),))
    for round_num in range(1, 5):
        rate = optimizers.learning_rate_of(state)
        assert rate == pytest.approx(schedule(round_num))
        state, stepped = optimizer.next(state, weights, gradient)
        np.testing.assert_allclose(stepped[0], weights[0] - rate * gradient[0], rtol=1e-6)
        weights = stepped


def test_fedadam_state_moves_and_clients_train_at_the_scheduled_rate(micro_task, tff_runtime):
    fed = experiment_config.FederatedConfig(
        total_rounds=4, client_optimizer="sgd", client_learning_rate=0.1,
        client_lr_schedule="exponential", client_lr_decay_rate=0.25,
        server_optimizer="adam", server_learning_rate=0.01)
    built = process_lib.build_federated_pruning_process(
        micro_task, config_lib.PruningConfig(scheme="none"),
        fed.client_optimizer_built(), fed.server_optimizer_built())
    state = built.process.initialize()
    schedule = fed.lr_schedule("client")
    # One batch of plain SGD: a client's delta is exactly rate * gradient.
    data = [micro_task.client_dataset(micro_task.train_client_ids[0], training=True,
                                      seed=1).take(1)]
    deltas = {}
    for round_num in (1, 2):
        at_round = optimizers.set_round_learning_rate(state, schedule, round_num)
        # Set in Python, seen by the process itself (its get_hparams).
        assert optimizers.learning_rate_of(
            built.process.get_hparams(at_round)["client_work"]) == pytest.approx(
                schedule(round_num))
        assert optimizers.client_learning_rate(at_round) == pytest.approx(schedule(round_num))
        received = built.to_wire(at_round.global_model_weights)
        update = built.client_work.next(at_round.client_work, [received], data).result[0]
        deltas[round_num] = [np.asarray(d) for d in update.update["delta"]]
    assert sum(int(np.sum(np.abs(d) > 1e-4)) for d in deltas[1]) > 0
    for d1, d2 in zip(deltas[1], deltas[2]):
        # (w - (w - lr * g)) rounds at the float32 eps of w: atol.
        np.testing.assert_allclose(d2, 0.25 * d1, rtol=1e-3, atol=1e-6)

    # FedAdam: the server's moments start at zero and move with the round.
    def moments(s):
        opt = s.finalizer["optimizer"]
        return [np.asarray(t) for k in ("accumulator", "preconditioner")
                for t in tf.nest.flatten(opt[k])]
    assert all(np.all(m == 0) for m in moments(state))
    after = built.process.next(state, data).state
    assert any(np.any(m != 0) for m in moments(after))
    assert optimizers.learning_rate_of(after.finalizer["optimizer"]) == pytest.approx(0.01)
