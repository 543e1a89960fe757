"""The client_vote mask policy (tff_prune.pruning.votes)."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tasks.asr import units as cu
from tff_prune.pruning import importance, masks, units, votes
from tff_prune.pruning import structures

SHAPES = cu.conformer_weight_shapes(d_model=16, num_blocks=2, ff_dim=64, conv_channels=16, conv_kernel=7,
                                    freq_positions=19, subsample_channels=8, vocab_size=10)
LAYERS = [k.rsplit("/", 1)[0] for k in SHAPES if k.endswith("kernel")]
ALL_SCHEMES = [("unstructured", None), ("block", None)] + [("structured", s) for s in structures.STRUCTURES]


@functools.lru_cache(maxsize=None)
def structure(scheme, name):
    return cu.build_unit_structure(SHAPES, scheme, name, LAYERS, 4)


def client_weights(seed):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in SHAPES.items()}


def client_mask(s, seed, sparsity, distribution):
    w = client_weights(seed)
    return masks.compute_masks(importance.magnitude_scores({k: w[k] for k in s.unit_ids}), s, sparsity,
                               distribution)


def server_scores(s, seed=99):
    w = client_weights(seed)
    return importance.magnitude_scores({k: w[k] for k in s.unit_ids})


def same(a, b):
    return all((a[k].numpy() == b[k].numpy()).all() for k in a)


@pytest.mark.parametrize("scheme,name", ALL_SCHEMES)
@pytest.mark.parametrize("distribution", masks.DISTRIBUTIONS)
def test_identical_client_masks_are_reproduced(scheme, name, distribution):
    s = structure(scheme, name)
    for sparsity in (0.3, 0.7):
        mask = client_mask(s, 0, sparsity, distribution)
        vote = votes.average_masks([mask, mask, mask], weights=[5, 1, 2])
        out = votes.masks_from_votes(vote, server_scores(s), s, sparsity, distribution)
        assert same(out, mask), (s.name, distribution, sparsity)
        assert float(votes.mask_agreement(vote, out)) == 1.0


@pytest.mark.parametrize("scheme,name", [("unstructured", None), ("structured", "column"),
                                         ("structured", "head"), ("structured", "channel")])
def test_majority_wins(scheme, name):
    s = structure(scheme, name)
    a, b = client_mask(s, 1, 0.5, "uniform"), client_mask(s, 2, 0.5, "uniform")
    assert not same(a, b)
    vote = votes.average_masks([a, b, a])
    assert same(votes.masks_from_votes(vote, server_scores(s), s, 0.5, "uniform"), a)
    # Example weighting: one client with more data outvotes two small ones.
    vote = votes.average_masks([a, b, a], weights=[10, 30, 10])
    assert same(votes.masks_from_votes(vote, server_scores(s), s, 0.5, "uniform"), b)
    agreement = float(votes.mask_agreement(vote, b))
    assert 0.5 < agreement < 1.0


def test_hand_made_votes_and_tie_break():
    s = units.unstructured({"d/kernel": (1, 6)}, ["d"])
    key = "d/kernel"
    # Three equal clients; elements 0, 1 are removed by all, 2 by two of three,
    # 3 by one; 4 and 5 by none.
    client = [np.array([[0, 0, 0, 1, 1, 1]]), np.array([[0, 0, 0, 0, 1, 1]]), np.array([[0, 0, 1, 1, 1, 1]])]
    vote = votes.average_masks([{key: tf.constant(c, tf.float32)} for c in client])
    tie = {key: tf.constant([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])}
    out = votes.masks_from_votes(vote, tie, s, 0.5, "global")[key].numpy()
    assert out.tolist() == [[0, 0, 0, 1, 1, 1]]  # majority: 0, 1, 2 removed
    # Two clients that disagree completely: the tie-break (server magnitude) decides.
    vote = {key: tf.constant([[0.5, 0.5, 0.5, 0.5, 1.0, 1.0]])}
    tie = {key: tf.constant([[1.0, 4.0, 3.0, 2.0, 9.0, 9.0]])}
    out = votes.masks_from_votes(vote, tie, s, 0.5, "global")[key].numpy()
    assert out.tolist() == [[0, 1, 0, 0, 1, 1]]
    # Equal votes and equal tie-break: lower unit index goes first.
    out = votes.masks_from_votes({key: tf.ones([1, 6])}, {key: tf.ones([1, 6])}, s, 0.5, "global")[key]
    assert out.numpy().tolist() == [[0, 0, 0, 1, 1, 1]]


def test_mask_agreement_values():
    key = "k"
    a = {key: tf.constant([1.0, 1.0, 0.0, 0.0])}
    b = {key: tf.constant([0.0, 0.0, 1.0, 1.0])}
    vote = votes.average_masks([a, b])
    # Disjoint removals at sparsity 0.5 with two equal clients: half of all decisions agree.
    assert float(votes.mask_agreement(vote, a)) == 0.5
    vote = votes.average_masks([a, a, a, b])
    assert float(votes.mask_agreement(vote, a)) == 0.75
    assert float(votes.mask_agreement(vote, b)) == 0.25


def test_votes_inside_tf_function():
    s = structure("structured", "column")
    a, b = client_mask(s, 1, 0.5, "global"), client_mask(s, 2, 0.5, "global")
    vote = votes.average_masks([a, a, b])
    tie = server_scores(s)

    @tf.function
    def fn(v, t, sparsity):
        m = votes.masks_from_votes(v, t, s, sparsity, "adaptive")
        return m, votes.mask_agreement(v, m)

    m, agreement = fn(vote, tie, tf.constant(0.5))
    assert same(m, votes.masks_from_votes(vote, tie, s, 0.5, "adaptive"))
    assert 0.0 < float(agreement) <= 1.0
