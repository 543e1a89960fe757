"""A client's training-step FLOPs: TensorFlow's own per-op counts, summed."""

import tensorflow as tf

from tff_prune.model import client_cost


def test_a_matmul_counts_two_flops_per_multiply_add():
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [2, 8])
        tf.matmul(a, tf.ones([8, 4]))
    assert client_cost.graph_float_ops(graph) == 2 * 2 * 8 * 4


def test_step_flops_are_the_profilers_figure_without_its_stderr_line(micro_task, capsys):
    model = micro_task.build_model()
    batch = next(iter(micro_task.client_dataset(micro_task.train_client_ids[0],
                                                training=True, seed=0)))
    capsys.readouterr()
    flops = client_cost.training_step_flops(micro_task, model, batch)
    # One op of the micro step has a data-dependent shape: the profiler
    # says so on stderr for every graph; the accounting prints nothing.
    assert capsys.readouterr().err == ""

    graph = client_cost.training_step_graph(micro_task, model, batch)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profiled = tf.compat.v1.profiler.profile(graph, options=options).total_float_ops
    assert "no flops stats" in capsys.readouterr().err  # the line the profiler writes
    assert flops == profiled > 0


def test_a_count_on_a_models_first_build_stands_for_its_architecture(micro_task):
    # The run counts each client model on the build it makes anyway (before
    # TFF traces it): the figure is a fresh build's, and no build is added.
    from tff_prune.model import wrappers  # pylint: disable=import-outside-toplevel
    from tff_prune.program import accounting  # pylint: disable=import-outside-toplevel

    reference = micro_task.build_model()
    builds = []

    def model_fn():
        builds.append(1)
        return wrappers.wrap_for_pruning(reference, wrappers.select_prunable_layers(reference))

    counted = accounting.ClientStepFlops(micro_task, seed=0)
    counted.count(model_fn, model_fn())
    assert counted(model_fn) > 0 and len(builds) == 1
    assert counted(model_fn) == accounting.ClientStepFlops(micro_task, seed=0)(model_fn)
