"""Unit structures of a tiny 2-block Conformer (tff_prune.pruning.units / tasks.asr.units)."""

import numpy as np
import pytest

from tasks.asr import units as cu
from tff_prune.pruning import structures
from tff_prune.pruning import units

D, FF, HEADS, C, K, FREQ, C2, VOCAB = 16, 64, 4, 16, 7, 19, 8, 10


def tiny_shapes(depthwise_rank=3):
    return cu.conformer_weight_shapes(d_model=D, num_blocks=2, ff_dim=FF, conv_channels=C, conv_kernel=K,
                                      freq_positions=FREQ, subsample_channels=C2, vocab_size=VOCAB,
                                      depthwise_rank=depthwise_rank)


def kernel_layers(shapes):
    return [k.rsplit("/", 1)[0] for k in shapes if k.endswith("kernel")]


ALL_SCHEMES = [("unstructured", None), ("block", None)] + [("structured", s) for s in structures.STRUCTURES]


def build(scheme, structure, shapes=None, prunable=None):
    shapes = shapes or tiny_shapes()
    return cu.build_unit_structure(shapes, scheme, structure, prunable or kernel_layers(shapes), HEADS)


def test_hand_written_block_shapes_match_helper():
    shapes = tiny_shapes()
    expected = {
        "subsample_conv1/kernel": (3, 3, 1, 8), "subsample_conv2/kernel": (3, 3, 8, 8),
        "subsample_dense/kernel": (152, 16),  # 80 mels -> 39 -> 19 positions x 8 channels
        "block0_ff1_in/kernel": (16, 64), "block0_ff1_out/kernel": (64, 16), "block0_ff1_in/bias": (64,),
        "block0_mhsa_query/kernel": (16, 16), "block0_mhsa_output/kernel": (16, 16),
        "block0_conv_pointwise_in/kernel": (16, 32), "block0_conv_pointwise_in/bias": (32,),
        "block0_conv_depthwise/depthwise_kernel": (7, 16, 1), "block0_conv_depthwise/bias": (16,),
        "block0_conv_pointwise_out/kernel": (16, 16), "block1_ff2_out/kernel": (64, 16),
        "ctc_output/kernel": (16, 10),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    assert len(kernel_layers(shapes)) == 3 + 2 * 11 + 1
    assert len(shapes) == 2 * len(kernel_layers(shapes))  # every layer has a bias


@pytest.mark.parametrize("scheme,structure", ALL_SCHEMES)
@pytest.mark.parametrize("dw_rank", [3, 4])
def test_partition_covers_each_kernel_once(scheme, structure, dw_rank):
    shapes = tiny_shapes(dw_rank)
    s = build(scheme, structure, shapes)
    if structure == "head":
        expected = [k for k in shapes if "_mhsa_" in k and k.endswith("/kernel")]
    elif structure == "channel":
        expected = [k for k in shapes if k.endswith("kernel") and ("subsample" in k or "_conv_" in k)]
    else:
        expected = [k for k in shapes if k.endswith("kernel")]
    assert sorted(s.kernel_keys) == sorted(expected)
    counted = 0
    for key in s.unit_ids:
        ids = s.unit_ids[key]
        assert ids.shape == tuple(shapes[key]) and ids.dtype == np.int32
        assert ids.min() >= -1 and ids.max() < s.num_units
        if key in s.kernel_keys:  # primary ids partition every covered kernel
            assert (ids >= 0).all(), key
            counted += ids.size
        for shared in [s.shared_unit_ids.get(key)]:
            if shared is not None:
                assert shared.shape == ids.shape
                assert not np.any((shared >= 0) & (shared == ids))
    assert counted == s.total_params
    # Every unit has at least one kernel element; counts agree with the arrays.
    assert (s.unit_param_count > 0).all()
    n_memberships = sum(int((a >= 0).sum()) for k in s.kernel_keys for a in s.memberships(k))
    assert s.unit_param_count.sum() == n_memberships
    assert s.layer_param_count.sum() == s.total_params
    assert s.unit_layer.shape == s.unit_group.shape == (s.num_units,)
    # Each group lies inside one budget layer (so 'keep one per group' is per layer).
    for g in range(s.num_groups):
        assert np.unique(s.unit_layer[s.unit_group == g]).size == 1
    if scheme != "structured" or structure.startswith("half"):
        assert not s.shared_unit_ids  # a true partition


def _unit(s, key, index):
    return int(s.unit_ids[key][index])


def test_column_couplings():
    s = build("structured", "column")
    for ff in ("ff1", "ff2"):
        inn, out = f"block0_{ff}_in", f"block0_{ff}_out"
        for j in range(FF):
            u = _unit(s, f"{inn}/kernel", (0, j))
            assert (s.unit_ids[f"{inn}/kernel"][:, j] == u).all()  # the whole column
            assert _unit(s, f"{inn}/bias", j) == u
            assert (s.shared_unit_ids[f"{out}/kernel"][j, :] == u).all()  # consumer row
        # ff_out columns: residual outputs, units of their own (+ bias).
        for k in range(D):
            u = _unit(s, f"{out}/kernel", (0, k))
            assert (s.unit_ids[f"{out}/kernel"][:, k] == u).all() and _unit(s, f"{out}/bias", k) == u
            assert u not in s.unit_ids[f"{inn}/kernel"]
    q, k, v, o = (f"block1_mhsa_{p}" for p in ("query", "key", "value", "output"))
    for j in range(D):
        assert _unit(s, f"{q}/kernel", (3, j)) == _unit(s, f"{k}/kernel", (5, j)) == _unit(s, f"{k}/bias", j)
        assert _unit(s, f"{v}/kernel", (0, j)) == s.shared_unit_ids[f"{o}/kernel"][j, 0]
    pw_in, dw, pw_out = "block0_conv_pointwise_in", "block0_conv_depthwise", "block0_conv_pointwise_out"
    for c in range(C):
        u = _unit(s, f"{pw_in}/kernel", (0, c))
        assert _unit(s, f"{pw_in}/kernel", (0, c + C)) == u  # GLU value and gate
        assert (s.unit_ids[f"{dw}/depthwise_kernel"][:, c, 0] == u).all()
        assert _unit(s, f"{dw}/bias", c) == u
        assert (s.shared_unit_ids[f"{pw_out}/kernel"][c, :] == u).all()
    assert s.layer_names[:2] == ("subsample_conv1+subsample_conv2+subsample_dense",
                                 "block0_ff1_in+block0_ff1_out")
    # Uncoupled output layer: one unit per column.
    assert np.unique(s.unit_ids["ctc_output/kernel"]).size == VOCAB


def test_row_couplings():
    s = build("structured", "row")
    inn, out = "block0_ff1_in", "block0_ff1_out"
    for j in range(FF):
        u = _unit(s, f"{out}/kernel", (j, 0))
        assert (s.unit_ids[f"{out}/kernel"][j, :] == u).all()
        assert (s.shared_unit_ids[f"{inn}/kernel"][:, j] == u).all()  # producer column
        assert _unit(s, f"{inn}/bias", j) == u
    # ff_in rows come from the residual stream: units on their own.
    assert np.unique(s.unit_ids[f"{inn}/kernel"]).size == D
    assert f"{out}/bias" not in s.unit_ids  # residual output bias is never masked
    assert "block0_mhsa_query/bias" not in s.unit_ids  # q.k columns are not row units
    assert np.unique(s.unit_ids["ctc_output/kernel"]).size == D


def test_heads():
    s = build("structured", "head")
    assert s.num_units == 2 * HEADS and s.num_layers == 2
    dh = D // HEADS
    for b in range(2):
        q, k, v, o = (f"block{b}_mhsa_{p}" for p in ("query", "key", "value", "output"))
        for h in range(HEADS):
            cols = slice(h * dh, (h + 1) * dh)
            u = _unit(s, f"{q}/kernel", (0, h * dh))
            for name in (q, k, v):
                assert (s.unit_ids[f"{name}/kernel"][:, cols] == u).all()
                assert (s.unit_ids[f"{name}/bias"][cols] == u).all()
            assert (s.unit_ids[f"{o}/kernel"][cols, :] == u).all()
        assert f"{o}/bias" not in s.unit_ids
    assert len(np.unique(s.unit_group)) == 2  # at least one head per block survives


def test_channels():
    s = build("structured", "channel", tiny_shapes(depthwise_rank=4))
    c1, c2, dense = "subsample_conv1", "subsample_conv2", "subsample_dense"
    a = [_unit(s, f"{c1}/kernel", (0, 0, 0, c)) for c in range(C2)]
    b = [_unit(s, f"{c2}/kernel", (0, 0, 0, c)) for c in range(C2)]
    assert len(set(a + b)) == 2 * C2
    for c in range(C2):
        assert (s.unit_ids[f"{c1}/kernel"][..., c] == a[c]).all() and _unit(s, f"{c1}/bias", c) == a[c]
        assert (s.shared_unit_ids[f"{c2}/kernel"][:, :, c, :] == a[c]).all()  # conv2 input channel
        assert (s.unit_ids[f"{c2}/kernel"][..., c] == b[c]).all() and _unit(s, f"{c2}/bias", c) == b[c]
        rows = np.arange(FREQ) * C2 + c  # flatten: rows f * C2 + c
        assert (s.unit_ids[f"{dense}/kernel"][rows, :] == b[c]).all()
    pw_in, dw, pw_out = "block1_conv_pointwise_in", "block1_conv_depthwise", "block1_conv_pointwise_out"
    for c in range(C):
        u = _unit(s, f"{pw_in}/kernel", (0, c))
        assert (s.unit_ids[f"{pw_in}/kernel"][:, [c, c + C]] == u).all()
        assert (s.unit_ids[f"{pw_in}/bias"][[c, c + C]] == u).all()
        assert (s.unit_ids[f"{dw}/depthwise_kernel"][:, 0, c, 0] == u).all() and _unit(s, f"{dw}/bias", c) == u
        assert (s.unit_ids[f"{pw_out}/kernel"][c, :] == u).all()
    assert s.num_units == 2 * C2 + 2 * C
    assert "subsample_dense/bias" not in s.unit_ids and f"{pw_out}/bias" not in s.unit_ids


def test_blocks_tile_the_2d_view():
    s = build("block", None)
    ids = s.unit_ids["block0_ff1_in/kernel"]  # [16, 64] -> 16 x 16 blocks of (1, 4)
    assert np.unique(ids).size == 16 * 16
    assert (ids[3, 8:12] == ids[3, 8]).all() and ids[3, 8] != ids[3, 12] and ids[3, 8] != ids[4, 8]
    # Conv2D view [kh*kw*in, out]: conv1 [3,3,1,8] -> [9, 8] -> 9 x 2 blocks.
    assert np.unique(s.unit_ids["subsample_conv1/kernel"]).size == 18
    # Partial edge blocks: ctc_output [16, 10] -> columns 8..9 form a block of 2.
    out = s.unit_ids["ctc_output/kernel"]
    assert np.unique(out).size == 16 * 3 and (out[0, 8:] == out[0, 8]).all()
    s2 = units.blocks(tiny_shapes(), ["ctc_output"], (4, 4))
    assert np.bincount(s2.unit_ids["ctc_output/kernel"].ravel()).tolist() == [16, 16, 8] * 4


def test_half_columns_and_rows():
    s = build("structured", "half_column")
    ids = s.unit_ids["block0_ff1_out/kernel"]  # [64, 16]
    assert (ids[:32, 5] == ids[0, 5]).all() and (ids[32:, 5] == ids[32, 5]).all() and ids[0, 5] != ids[32, 5]
    conv1 = s.unit_ids["subsample_conv1/kernel"].reshape(9, 8)  # odd column length: 5 + 4
    assert np.bincount(np.unique(conv1[:, 0], return_counts=True)[1]).tolist() == [0, 0, 0, 0, 1, 1]
    assert not any(k.endswith("/bias") for k in s.unit_ids)
    r = build("structured", "half_row")
    ids = r.unit_ids["block0_ff1_out/kernel"]
    assert (ids[7, :8] == ids[7, 0]).all() and (ids[7, 8:] == ids[7, 8]).all() and ids[7, 0] != ids[7, 8]
    views = units.layer_views(tiny_shapes(), kernel_layers(tiny_shapes()))
    assert r.num_units == sum(v.matrix_shape()[0] * min(2, v.matrix_shape()[1]) for v in views)
    assert units.layer_views(tiny_shapes(), ["block0_conv_depthwise"])[0].matrix_shape() == (K, C)


def test_couplings_only_between_prunable_layers():
    shapes = tiny_shapes()
    prunable = [n for n in kernel_layers(shapes) if n != "block0_ff1_out"]
    s = build("structured", "column", shapes, prunable)
    assert "block0_ff1_out/kernel" not in s.unit_ids
    assert "block0_ff1_in" in s.layer_names  # its own budget layer now
    ids = s.unit_ids["block0_ff1_in/kernel"]
    assert np.unique(ids).size == FF and "block0_ff1_in/kernel" not in s.shared_unit_ids


def test_build_errors():
    shapes = tiny_shapes()
    layers = kernel_layers(shapes)
    with pytest.raises(ValueError, match="scheme"):
        cu.build_unit_structure(shapes, "magic", None, layers, HEADS)
    with pytest.raises(ValueError, match="structure"):
        cu.build_unit_structure(shapes, "structured", None, layers, HEADS)
    with pytest.raises(ValueError, match="compute_m_by_n_masks"):
        cu.build_unit_structure(shapes, "m_by_n", None, layers, HEADS)
    with pytest.raises(ValueError, match="no_such_layer"):
        cu.build_unit_structure(shapes, "unstructured", None, layers + ["no_such_layer"], HEADS)
    with pytest.raises(ValueError, match="num_heads"):
        cu.build_unit_structure(shapes, "structured", "head", layers, 3)
    bad = dict(shapes)
    bad["subsample_dense/kernel"] = (150, D)
    with pytest.raises(ValueError, match="multiple"):
        cu.build_unit_structure(bad, "structured", "channel", layers, HEADS)


def test_matches_the_real_model_layout():
    """The couplings apply to tasks/asr/model.py's actual weights (names and shapes)."""
    # A plain import: a broken model module must fail this test, not skip it.
    from tasks.asr import model as model_lib  # pylint: disable=import-outside-toplevel
    cfg = model_lib.ConformerConfig.tiny(num_blocks=1)
    model = model_lib.build_conformer_ctc(cfg, 12)
    shapes = {}
    for layer in model.layers:
        for w in layer.weights:
            shapes[f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}"] = tuple(w.shape)
    expected = cu.conformer_weight_shapes(
        cfg.d_model, cfg.num_blocks, cfg.ff_multiplier * cfg.d_model, cfg.d_model, cfg.conv_kernel_size,
        19, cfg.subsampling_channels, 12)
    assert {k: v for k, v in shapes.items() if k in expected} == expected
    s = cu.build_unit_structure(shapes, "structured", "channel", model_lib.prunable_layer_names(model),
                                cfg.num_heads)
    assert s.num_units == 2 * cfg.subsampling_channels + cfg.d_model
