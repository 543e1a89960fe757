"""Server optimizers and learning-rate schedules over rounds (`tff_prune.federated.optimizers`)."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import lamb
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


def _lamb_reference(weights, gradients, lr, beta_1, beta_2, epsilon, weight_decay):
    """LAMB by hand (You et al., Algorithm 2, phi the identity), in float64."""
    m = [np.zeros_like(w) for w in weights]
    v = [np.zeros_like(w) for w in weights]
    for t, step_gradients in enumerate(gradients, start=1):
        stepped = []
        for i, (w, g) in enumerate(zip(weights, step_gradients)):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            r = ((m[i] / (1 - beta_1 ** t)) / (np.sqrt(v[i] / (1 - beta_2 ** t)) + epsilon)
                 + weight_decay * w)
            w_norm, r_norm = np.linalg.norm(w), np.linalg.norm(r)
            trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
            stepped.append(w - lr * trust * r)
        weights = stepped
    return weights, m, v


def test_lamb_steps_are_the_formula_with_bias_correction_and_trust_ratio():
    # Exact in float32, as TFF keeps hyperparameters in the state.
    hparams = dict(lr=0.125, beta_1=0.75, beta_2=0.875, epsilon=2.0 ** -10,
                   weight_decay=2.0 ** -7)
    rng = np.random.default_rng(0)
    # A kernel, a small bias (trust ratio far from 1), and a zero tensor
    # (no weight norm: trust ratio 1, the Adam step).
    weights = [rng.normal(size=(3, 4)), 0.01 * rng.normal(size=(4,)), np.zeros((2,))]
    gradients = [[rng.normal(size=w.shape) for w in weights] for _ in range(3)]
    expected, m, v = _lamb_reference(weights, gradients, **hparams)

    opt = lamb.build_lamb(hparams["lr"], hparams["beta_1"], hparams["beta_2"],
                          hparams["epsilon"], hparams["weight_decay"])
    state = opt.initialize(tuple(tf.TensorSpec(w.shape, tf.float64) for w in weights))
    got = tuple(tf.constant(w) for w in weights)
    next_fn = tf.function(opt.next)  # as the server's computation runs it: in a graph
    for step_gradients in gradients:
        state, got = next_fn(state, got, tuple(tf.constant(g) for g in step_gradients))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12)
    assert int(state["step"]) == 3
    for key, reference in (("accumulator", m), ("preconditioner", v)):
        for g, e in zip(state[key], reference):
            np.testing.assert_allclose(g, e, rtol=1e-12)
    # The trust ratio acted: the bias moved by about lr times its own norm,
    # far less than the Adam step (about lr per coordinate) would move it.
    bias_step = np.linalg.norm(np.asarray(got[1]) - weights[1])
    assert bias_step < 0.5 * hparams["lr"] * np.sqrt(weights[1].size)
    # Its rate is a hyperparameter like TFF's own optimizers' (what the
    # server schedule and `learning_rate_of` set and read).
    assert optimizers.learning_rate_of(state) == pytest.approx(hparams["lr"])
    state = opt.set_hparams(state, {"learning_rate": 0.05})
    assert opt.get_hparams(state)["learning_rate"] == 0.05


def test_lamb_is_a_server_optimizer_flag():
    fed = experiment_config.FederatedConfig(server_optimizer="lamb",
                                            server_learning_rate=0.01, server_epsilon=1e-6)
    server = fed.server_optimizer_built()
    state = server.initialize((tf.TensorSpec([2], tf.float32),))
    assert optimizers.learning_rate_of(state) == pytest.approx(0.01)
    assert float(state["epsilon"]) == pytest.approx(1e-6)
    assert float(state["weight_decay"]) == 0.0
    with pytest.raises(config_lib.ConfigError, match="--server_optimizer='lars' is not one of"):
        experiment_config.FederatedConfig(server_optimizer="lars")
