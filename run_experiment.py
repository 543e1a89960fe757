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


@contextlib.contextmanager
def _native_stderr_silenced():
    """TF 2.14 logs CUDA-plugin registration errors at import whatever the log
    level; hide the C-level stderr while importing (Python errors still show)."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "3":
        yield
        return
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)

from absl import app  # noqa: E402
from absl import logging  # noqa: E402


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.get_logger().setLevel("ERROR")
    from tff_prune import experiment  # pylint: disable=g-import-not-at-top
    from tff_prune import experiment_flags  # pylint: disable=g-import-not-at-top
    try:
        config = experiment_flags.experiment_config_from_flags()
        print(f"[tff-prune] {config.mode} run -> {config.output_dir}", flush=True)
        progress = _Progress(config, experiment_flags.FLAGS.progress)
        try:
            summary = experiment.run(config, on_round=progress.update,
                                     overwrite=experiment_flags.FLAGS.overwrite)
        finally:
            progress.close()
    except experiment.USER_ERRORS as e:
        print(f"run_experiment.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run_experiment.py: interrupted (rerun the same command to resume "
              "from the last checkpoint)", file=sys.stderr)
        return 130
    final = summary["final"]
    print(f"[tff-prune] held-out WER {final['wer']:.3f}  CER {final['cer']:.3f}  "
          f"loss {final['loss']:.3f}  ({summary['wall_seconds'] / 60:.1f} min)")
    print(f"[tff-prune] results: {config.output_dir}/ (summary.json, metrics.csv, eval.csv, "
          f"tensorboard/)")
    print(f"[tff-prune] model:   {summary['outputs']['final_model']}")
    return 0


class _Progress:
    """A tqdm bar over rounds, or plain lines at evaluations when not interactive."""

    def __init__(self, config, mode: str):
        self.total = (config.federated.total_rounds if config.mode == "federated"
                      else config.centralized.epochs)
        self.enabled = mode == "on" or (mode == "auto" and sys.stdout.isatty())
        self.bar = None
        self.wer = None

    def update(self, row: dict) -> None:
        if "eval_wer" in row:
            self.wer = row["eval_wer"]
        if not self.enabled:
            if "eval_wer" in row:
                print(f"[round {row['round']}] loss {row['train_loss']:.2f}  "
                      f"sparsity {row['sparsity']:.3f}  held-out WER {row['eval_wer']:.3f} "
                      f"CER {row['eval_cer']:.3f}", flush=True)
            return
        if self.bar is None:
            import tqdm  # pylint: disable=g-import-not-at-top
            self.bar = tqdm.tqdm(total=self.total, initial=row["round"] - 1,
                                 unit="round", dynamic_ncols=True)
        postfix = {"loss": f"{row['train_loss']:.2f}", "sparsity": f"{row['sparsity']:.2f}"}
        if self.wer is not None:
            postfix["WER"] = f"{self.wer:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    # Flags are defined on import of tff_prune.experiment_flags; import it here
    # (before parsing) but after the environment is set.
    with _native_stderr_silenced():
        import tff_prune.experiment_flags  # noqa: F401,E402  pylint: disable=unused-import
    logging.set_verbosity(logging.WARNING)
    app.run(main)
