"""What TFF keeps of the computations it ran, and how to let it go.

TFF's execution contexts compile each computation they invoke once and keep
the result in `CompilerPipeline.compile`, a `functools.lru_cache` of 128
entries keyed by the computation itself: every computation invoked stays
alive (its traced graphs, its compiled form) until 128 newer ones push it
out. A run that builds one round computation per compact architecture never
reaches 128, so without this every architecture it ever trained stays in
memory.
"""

from tensorflow_federated.python.core.impl.execution_contexts import compiler_pipeline


def forget_compiled_computations() -> None:
    """Empties TFF's compile cache (every context's). Computations still in
    use are compiled again on their next call; those nothing else holds are
    freed."""
    compiler_pipeline.CompilerPipeline.compile.cache_clear()
