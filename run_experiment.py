#!/usr/bin/env python3
"""Run one federated pruning experiment (or its centralized baseline).

  python run_experiment.py --pruning=structured
  python run_experiment.py --mode=centralized --pruning=none
  python run_experiment.py --flagfile=bazel_configs/NAME.cfg

See README.md for the flags that matter and what a run leaves behind.
"""

import contextlib
import os
import sys

# Keep TensorFlow's C++ noise out of the user's terminal. (Not setdefault:
# importing TensorFlow sets TF_CPP_MIN_LOG_LEVEL=1, which child processes of
# a Python that imported TF would inherit.) TFF_PRUNE_TF_LOG_LEVEL=0 shows all.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = os.environ.get("TFF_PRUNE_TF_LOG_LEVEL", "3")

from absl import app  # noqa: E402
from absl import logging  # noqa: E402


@contextlib.contextmanager
def _native_stderr_to(path: str):
    """Sends C/C++-level writes to fd 2 (TensorFlow's and TFF's native logging,
    e.g. CUDA-plugin registration errors or graph-optimizer notes, which ignore
    log levels) to `path`, while Python's `sys.stderr` (our errors, tracebacks,
    the progress bar) keeps writing to the terminal."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    with open(path, "a") as sink:
        os.dup2(sink.fileno(), 2)
    python_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1)
    # Never closed: a logging handler created inside the block (absl's is
    # created on first use) keeps this stream, and must still be able to
    # write to the terminal after the block.
    _KEPT_STREAMS.append(sys.stderr)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)
        os.close(terminal)


_KEPT_STREAMS = []


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.get_logger().setLevel("ERROR")
    from tff_prune.program import divergence  # pylint: disable=g-import-not-at-top
    from tff_prune.program import experiment  # pylint: disable=g-import-not-at-top
    from tff_prune.program import experiment_flags  # pylint: disable=g-import-not-at-top
    from tff_prune.runtime import owned as runtime  # pylint: disable=g-import-not-at-top
    try:
        config = experiment_flags.experiment_config_from_flags()
        print(f"[tff-prune] {config.mode} run -> {config.output_dir}", flush=True)
        progress = _Progress(config, experiment_flags.FLAGS.progress)
        try:
            summary = experiment.run(config, on_round=progress.update,
                                     overwrite=experiment_flags.FLAGS.overwrite,
                                     native_stderr=_native_stderr_to)
        finally:
            progress.close()
    except experiment.USER_ERRORS as e:
        print(f"run_experiment.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run_experiment.py: interrupted (rerun the same command to resume "
              "from the last checkpoint)", file=sys.stderr)
        return 130
    except runtime.WorkerLostError as e:
        print(f"run_experiment.py: error: {e}; the last checkpoint is kept: rerun the "
              "same command to resume", file=sys.stderr)
        return 3
    except divergence.DivergedError as e:
        print(f"run_experiment.py: error: {e}; the checkpoints before round {e.round_num} "
              "are kept, nothing is exported", file=sys.stderr)
        return divergence.EXIT_CODE
    final = summary["final"]
    scores = "  ".join(f"{m['name'].upper()} {final[m['name']]:.3f}"
                       for m in summary["metrics"] if not m["detail"])
    print(f"[tff-prune] held-out {scores}  loss {final['loss']:.3f}  "
          f"({summary['wall_seconds'] / 60:.1f} min)")
    extra = ", tensorboard/, checkpoints/" if config.mode == "federated" else ", checkpoints/"
    print(f"[tff-prune] results: {config.output_dir}/ (summary.json, metrics.csv, "
          f"eval.csv{extra})")
    from tff_prune import report  # pylint: disable=g-import-not-at-top
    try:
        built = report.build_report(config.root_output_dir)
        print(f"[tff-prune] report:  {built.markdown_path} "
              f"(plots: {', '.join(os.path.basename(p) for p in built.plot_paths)})")
    except report.ReportError as e:
        print(f"[tff-prune] no report: {e}")
    print(f"[tff-prune] model:   {summary['outputs']['final_model']}")
    export_dir = experiment_flags.FLAGS.export_dir
    if export_dir != "none":
        from tff_prune import export  # pylint: disable=g-import-not-at-top
        from tff_prune.federated import optimizers  # pylint: disable=g-import-not-at-top
        from tff_prune.program import registry  # pylint: disable=g-import-not-at-top
        native_log = os.path.join(config.output_dir, "logs", "native_stderr.log")
        try:
            # TFLite conversion is loud on the native stderr: keep it in the log.
            with _native_stderr_to(native_log):
                result = export.export_checkpoint(
                    summary["outputs"]["final_model"],
                    export_dir or os.path.join(config.output_dir, "export"),
                    registry.task_export,
                    on_device_optimizer_for=(optimizers.client_optimizer_of
                                             if experiment_flags.FLAGS.export_train_tflite
                                             else None))
        except export.ExportError as e:
            print(f"run_experiment.py: error: export failed: {e}; the trained model is "
                  f"kept in {summary['outputs']['final_model']} (export it later with "
                  f"python -m tff_prune.export --checkpoint={config.output_dir} "
                  "--export_dir=DIR)", file=sys.stderr)
            return 4
        print(f"[tff-prune] export:  {result.path} (TF Serving version {result.version}, "
              f"{result.params:,} params; see docs/serving.md)")
    return 0


class _Progress:
    """A tqdm bar over rounds, or plain lines at evaluations when not interactive."""

    def __init__(self, config, mode: str):
        self.total = (config.federated.total_rounds if config.mode == "federated"
                      else config.centralized.epochs)
        self.unit = "round" if config.mode == "federated" else "epoch"
        self.enabled = mode == "on" or (mode == "auto" and sys.stdout.isatty())
        self.bar = None
        self.headline = None  # (name, value) of the task's first metric

    def update(self, row: dict) -> None:
        # The task's metrics, headline first, on rounds that evaluated.
        metrics = [(name, row[f"eval_{name}"]) for name in row.get("shown_metrics", ())
                   if f"eval_{name}" in row]
        if metrics:
            self.headline = metrics[0]
        if not self.enabled:
            if metrics:
                scores = " ".join(f"{name.upper()} {value:.3f}" for name, value in metrics)
                print(f"[{self.unit} {row['round']}] loss {row['train_loss']:.2f}  "
                      f"sparsity {row['sparsity']:.3f}  held-out {scores}", flush=True)
            return
        if self.bar is None:
            import tqdm  # pylint: disable=g-import-not-at-top
            self.bar = tqdm.tqdm(total=self.total, initial=row["round"] - 1,
                                 unit=self.unit, dynamic_ncols=True)
        postfix = {"loss": f"{row['train_loss']:.2f}", "sparsity": f"{row['sparsity']:.2f}"}
        if self.headline is not None:
            postfix[self.headline[0].upper()] = f"{self.headline[1]:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    # Flags are defined on import of tff_prune.program.experiment_flags; import it here
    # (before parsing) but after the environment is set.
    with _native_stderr_to(os.devnull):
        import tff_prune.program.experiment_flags  # noqa: F401,E402  pylint: disable=unused-import
    logging.set_verbosity(logging.WARNING)
    app.run(main)
