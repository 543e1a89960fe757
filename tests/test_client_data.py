"""Client datasets built inside the TFF worker from speaker ids.

The worker reads the feature shards by paths relative to its working folder
(the feature cache); what it builds must be what the controller builds.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from tff_prune.federated import client_data
from tff_prune.model import wrappers
from tff_prune.runtime import owned as runtime


def _batch_sums(task):
    """A TF computation: per-client (examples, feature sum, label sum, frames)."""
    data_type = tff.SequenceType(wrappers.tff_type(task.batch_spec))

    @tff.tensorflow.computation(data_type)
    def sums(dataset):
        def add(totals, batch):
            x, y = batch
            return (totals[0] + tf.shape(y["labels"])[0],
                    totals[1] + tf.reduce_sum(tf.cast(x["features"], tf.float64)),
                    totals[2] + tf.reduce_sum(tf.cast(y["labels"], tf.int64)),
                    totals[3] + tf.reduce_sum(tf.cast(x["feature_lengths"], tf.int64)))
        return dataset.reduce((tf.constant(0), tf.constant(0.0, tf.float64),
                               tf.constant(0, tf.int64), tf.constant(0, tf.int64)), add)

    @tff.federated_computation(tff.FederatedType(data_type, tff.CLIENTS))
    def per_client(datasets):
        return tff.federated_map(sums, datasets)

    return sums, per_client


def test_worker_built_datasets_equal_the_controllers(micro_task, tmp_path):
    sums, per_client = _batch_sums(micro_task)
    inputs = client_data.ClientInputs(micro_task, training=False)
    assert inputs.by_id and inputs.worker_root == micro_task.feature_cache_dir
    composed = inputs.compose(per_client)
    # Only keys go in: the computation's client argument is <client_id, seed>.
    assert str(composed.type_signature.parameter) == "{<client_id=str,seed=int64>}@CLIENTS"
    ids = list(micro_task.test_client_ids)
    with runtime.local_runtime(log_dir=str(tmp_path),
                               worker_cwd=micro_task.feature_cache_dir):
        on_worker = composed(inputs.values(ids))
        here = per_client([micro_task.client_dataset(c, training=False) for c in ids])
    for worker_sums, local_sums, client in zip(on_worker, here, ids):
        assert int(worker_sums[0]) == micro_task.num_examples(client, training=False)
        assert int(worker_sums[0]) == int(local_sums[0])
        np.testing.assert_allclose(float(worker_sums[1]), float(local_sums[1]), rtol=1e-6)
        assert int(worker_sums[2]) == int(local_sums[2])
        assert int(worker_sums[3]) == int(local_sums[3])


def test_training_keys_seed_the_shuffle_and_repeat_the_epochs(micro_task, tmp_path):
    _, per_client = _batch_sums(micro_task)
    inputs = client_data.ClientInputs(micro_task, training=True, epochs=2)
    composed = inputs.compose(per_client)
    client = micro_task.train_client_ids[0]
    with runtime.local_runtime(log_dir=str(tmp_path),
                               worker_cwd=micro_task.feature_cache_dir):
        a, b, c = composed(inputs.values([client] * 3, [1, 1, 2]))
    assert int(a[0]) == 2 * micro_task.num_examples(client, training=True)  # 2 epochs
    assert int(a[2]) == int(c[2])  # the same labels, whatever the order
    # The same seed gives the same augmented data; another seed other masks.
    assert float(a[1]) == float(b[1])
    assert float(a[1]) != float(c[1])


def test_round_seed_differs_per_round_and_position():
    seeds = {client_data.round_seed(0, r, i) for r in range(1, 50) for i in range(16)}
    assert len(seeds) == 49 * 16
    assert len({client_data.round_seed(s, 1, 0) for s in range(3)}) == 3  # per run seed
