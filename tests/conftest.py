"""Shared pytest fixtures: the tiny synthetic speech corpus and shared runs.

Expensive things (a corpus, an end-to-end run) are built once per session
and shared by both pytest-xdist workers: `build_once` builds each under a
file lock in a folder every worker sees, the first worker that needs it
builds it, the other waits on the lock and reads the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable

import pytest

# Nothing the tests import or start (run_experiment.py, workers, benches)
# writes bytecode into the checkout.
sys.dont_write_bytecode = True
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"

# The environment of the shell pytest was started from, before importing
# TensorFlow added its own variables to it (TF2_BEHAVIOR, TF_CPP_MIN_LOG_LEVEL,
# KMP_*): command lines started with `shell_env()` see what a user's would.
# (Inherited, TF2_BEHAVIOR=1 hid a `python -m tff_prune.export` that failed
# in every shell.)
_SHELL_ENV = dict(os.environ)

# Replaces TFF's default context (which would start an unowned worker) before
# any test can touch it; tests get workers only from the `tff_runtime` fixture.
import tff_prune.runtime.owned  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

REPO = pathlib.Path(__file__).resolve().parents[1]


def shell_env(**extra: str) -> dict:
    """The environment for a command line a test starts: the shell's, as a
    user has it (not this process's, which importing TensorFlow changed),
    plus `extra`."""
    return {**_SHELL_ENV, **extra}


# 4 train + 2 held-out test speakers x 6 utterances; ~0.5 s to synthesize.
# The smoke presets (bazel_configs/common/smoke.flags) use the same numbers.
TINY_CORPUS_PARAMS = {
    "num_train_speakers": 4,
    "num_test_speakers": 2,
    "utterances_per_speaker": 6,
    "seed": 0,
}


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> pathlib.Path:
    """A folder of this session's temporary root that every xdist worker sees."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's base is <session root>/popen-gwN.
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / "shared"
    path.mkdir(exist_ok=True)
    return path


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path):
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(shared: pathlib.Path, name: str,
               build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """`shared/name`, built by `build(path)` by the first worker that asks.

    Both xdist workers may ask at once: the lock makes the second wait for
    the first's result. A build that failed is not retried by the other
    worker: it fails at once with the first failure's traceback.
    """
    path = shared / name
    done, failed = shared / f"{name}.done", shared / f"{name}.failed"
    with _exclusive(shared / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"{name} failed to build (in the other worker):\n"
                        f"{failed.read_text()[-4000:]}", pytrace=False)
        if not done.exists():
            if path.exists():
                shutil.rmtree(path)
            try:
                build(path)
            except BaseException:
                failed.write_text(traceback.format_exc())
                raise
            done.write_text("")
    return path


@pytest.fixture(scope="session")
def tiny_corpus_params() -> dict:
    """The parameters ``tiny_corpus_dir`` was generated with (a fresh copy)."""
    return dict(TINY_CORPUS_PARAMS)


@pytest.fixture(scope="session")
def tiny_corpus_dir(shared_dir) -> str:
    """Root of a tiny synthetic corpus, generated once per session. Treat it as read-only.

    ``<root>/train`` and ``<root>/test`` are LibriSpeech-layout directories
    (load them with ``tasks.asr.librispeech.load_librispeech``); ``<root>/manifest.json``
    describes the speakers.
    """
    from tasks.asr.synthetic_corpus import generate_synthetic_corpus

    def build(path):
        # In-process (num_workers=1): a spawn pool would cost more than the synthesis.
        generate_synthetic_corpus(str(path / "corpus"), num_workers=1, **TINY_CORPUS_PARAMS)

    return str(build_once(shared_dir, "tiny_corpus", build) / "corpus")


@pytest.fixture(scope="session")
def micro_task(tiny_corpus_dir, tmp_path_factory):
    """The ASR task on the tiny corpus: micro Conformer, no dropout, batch 4
    (its feature cache in a session temporary folder)."""
    from tasks.asr import librispeech
    from tasks.asr import task as task_lib

    train = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "train"))
    test = librispeech.load_librispeech(os.path.join(tiny_corpus_dir, "test"))
    return task_lib.AsrTask(train, test, task_lib.AsrTaskConfig(
        model_size="micro", dropout=0.0, batch_size=4),
        feature_cache_dir=str(tmp_path_factory.mktemp("features")))


@pytest.fixture(scope="session")
def tff_runtime(tmp_path_factory):
    """One owned TFF runtime for the whole session (workers stopped at the end)."""
    from tff_prune.runtime import owned as runtime

    with runtime.local_runtime(log_dir=str(tmp_path_factory.mktemp("tff_logs"))) as rt:
        yield rt


# -- shared end-to-end runs ------------------------------------------------------

SMOKE_CACHE = "smoke_cache"


def smoke_cache_flags(shared: pathlib.Path) -> list[str]:
    """Every cache a smoke run reads or fills, in the session's shared folder
    (each corpus synthesized, each speaker featurized, once per session)."""
    cache = shared / SMOKE_CACHE
    return [f"--corpus_cache_dir={cache}", f"--kws_cache_dir={cache / 'kws'}",
            f"--feature_cache_dir={cache / 'features'}"]


def preset_config(path: str, *extra: str):
    """The `ExperimentConfig` run_experiment.py builds from a flagfile and flags."""
    from absl import flags

    from tff_prune.program import experiment_flags

    flags.FLAGS.unparse_flags()
    cwd = os.getcwd()
    try:
        # Flagfiles name each other relative to the repository root.
        os.chdir(REPO)
        flags.FLAGS(["run_experiment.py", f"--flagfile={path}", *extra])
        return experiment_flags.experiment_config_from_flags()
    finally:
        os.chdir(cwd)
        flags.FLAGS.unparse_flags()


def _tf_graph_nodes(computation) -> list:
    """The NodeDefs of every TensorFlow graph (and its function library)
    inside `computation`, a TFF computation: what its workers run."""
    from tensorflow.core.framework import graph_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow_federated.python.core.impl.computation import computation_impl  # pylint: disable=import-outside-toplevel

    def graphs(message):
        if (type(message).__name__ == "Computation"
                and message.WhichOneof("computation") == "tensorflow"):
            graph = graph_pb2.GraphDef()
            message.tensorflow.graph_def.Unpack(graph)
            yield graph
            return
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                for item in value if field.label == field.LABEL_REPEATED else [value]:
                    yield from graphs(item)

    return [node for graph in graphs(computation_impl.ConcreteComputation.get_proto(computation))
            for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]]


def computation_op_types(computation) -> set[str]:
    """The TensorFlow op types `computation` (a TFF computation) runs."""
    return {node.op for node in _tf_graph_nodes(computation)}


def loop_dataset_options(computation) -> list:
    """The `tf.data.Options` protos of every `OptionsDataset` that
    `computation` (a TFF computation) runs: what its client loops' datasets
    are read with."""
    from tensorflow.core.framework import dataset_options_pb2  # pylint: disable=import-outside-toplevel
    found = []
    for node in _tf_graph_nodes(computation):
        if node.op == "OptionsDataset":
            options = dataset_options_pb2.Options()
            options.ParseFromString(node.attr["serialized_options"].s)
            found.append(options)
    return found


class FinishedRun:
    """What one finished experiment left in its folder."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.summary = json.loads((path / "summary.json").read_text())

    def csv(self, name: str) -> list[dict]:
        import csv  # pylint: disable=import-outside-toplevel
        with open(self.path / name) as f:
            return list(csv.DictReader(f))

    def weights(self) -> dict:
        """The final model's variables by checkpoint key (no optimizer slots)."""
        import numpy as np  # pylint: disable=import-outside-toplevel
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        reader = tf.train.load_checkpoint(str(self.path / "final_model" / "weights"))
        tensors = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                   if "OPTIMIZER" not in k}
        return {k: v for k, v in tensors.items()
                if isinstance(v, np.ndarray) and v.dtype.kind in "fiu"}

    def kernels(self) -> dict:
        """The final model's kernels by layer name, as the export rebuilds it."""
        from tff_prune.export import checkpoint  # pylint: disable=import-outside-toplevel
        from tff_prune.program import registry  # pylint: disable=import-outside-toplevel
        model = checkpoint.load_saved_run(str(self.path), registry.task_export).model
        kernels = {}
        for layer in model.layers:
            for attr in ("kernel", "depthwise_kernel"):
                if getattr(layer, attr, None) is not None:
                    kernels[layer.name] = getattr(layer, attr).numpy()
        return kernels


@dataclasses.dataclass
class ProgramResult:
    """How run_experiment.py ended: exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run_program_here(capsys, args: list[str]) -> ProgramResult:
    """run_experiment.py's `app.run(main)` in this process (flag parsing, the
    program, its error lines and exit code) without paying the TF/TFF import
    for each case; `capsys` captures what it prints (None: nothing is
    captured, e.g. in a session fixture). The command line itself is tested
    by real subprocess runs (test_cli, test_program, test_distributed)."""
    from absl import app  # pylint: disable=import-outside-toplevel
    from absl import flags  # pylint: disable=import-outside-toplevel

    import run_experiment  # pylint: disable=import-outside-toplevel
    # Defines run_experiment.py's flags (its __main__ block does the same).
    import tff_prune.program.experiment_flags  # noqa: F401 pylint: disable=import-outside-toplevel,unused-import

    flags.FLAGS.unparse_flags()
    if capsys is not None:
        capsys.readouterr()
    try:
        app.run(run_experiment.main, argv=["run_experiment.py", *args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        flags.FLAGS.unparse_flags()
    if capsys is None:
        return ProgramResult(code, "", "")
    out = capsys.readouterr()
    return ProgramResult(code, out.out, out.err)


class PausedRun:
    """A run_experiment.py subprocess that stopped itself (SIGSTOP) right
    after writing one round's checkpoint (`checkpoints.pause_if_requested`),
    so that a test kills it, or its worker, at exactly that point."""

    def __init__(self, args: list[str], round_num: int, log_dir: pathlib.Path,
                 timeout_s: float = 600):
        import time  # pylint: disable=import-outside-toplevel

        import psutil  # pylint: disable=import-outside-toplevel

        from tff_prune.program import checkpoints  # pylint: disable=import-outside-toplevel

        env = shell_env(**{checkpoints.PAUSE_AFTER_CHECKPOINT_ENV: str(round_num)})
        self.stderr_path = log_dir / f"paused_{round_num}.stderr"
        # Files, not pipes: a chatty child never blocks on a full pipe.
        with open(log_dir / f"paused_{round_num}.stdout", "w") as out, \
                open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, cwd=REPO, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (code {self.proc.returncode}) before "
                                     f"round {round_num}'s checkpoint:\n{self.stderr()}")
            if psutil.Process(self.proc.pid).status() == psutil.STATUS_STOPPED:
                return
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no pause after round {round_num} in {timeout_s} s")
            time.sleep(0.05)  # polling the condition, not standing in for it

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def resume_and_wait(self, timeout_s: float = 300) -> int:
        """SIGCONTs the run and waits for its exit code (killed on timeout: a hang)."""
        self.proc.send_signal(signal.SIGCONT)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the run hung after it was resumed:\n{self.stderr()}") \
                from None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (the run's owned workers die with it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _run_in_process(config) -> None:
    """`experiment.run` in this process: the program run_experiment.py calls,
    without paying the TF/TFF import again for every run."""
    from tff_prune.program import experiment  # pylint: disable=import-outside-toplevel
    experiment.run(config)


@pytest.fixture(scope="session")
def smoke_run(shared_dir) -> Callable[[str], FinishedRun]:
    """`smoke_run(name)`: the finished run of `bazel_configs/<name>.cfg`, run
    once per session (in the process of the xdist worker that asks first)
    with the session's shared caches, and shared by every test that reads it."""

    def get(name: str) -> FinishedRun:
        def build(root: pathlib.Path) -> None:
            config = preset_config(f"bazel_configs/{name}.cfg", *smoke_cache_flags(shared_dir),
                                   f"--root_output_dir={root}")
            _run_in_process(config)

        return FinishedRun(build_once(shared_dir, f"smoke_{name}", build) / name)

    return get


# The end-to-end runs go first, so that pytest-xdist fills the end of the run
# with short tests instead of leaving one worker idle behind the longest ones.
_LONG_MODULES = ("test_program.py", "test_distributed.py", "test_presets.py", "test_report.py",
                 "test_cli.py", "test_centralized_resume.py", "test_process.py",
                 "test_initial_model.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return _LONG_MODULES.index(name) if name in _LONG_MODULES else len(_LONG_MODULES)
    items.sort(key=rank)  # stable: each module keeps its own order


# -- tests write only under pytest's temporary folders ------------------------------

def _untracked_in_checkout() -> set[str]:
    """Untracked and ignored paths of the checkout (empty if it is no git checkout)."""
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return set()
    listed = subprocess.run(["git", "status", "--porcelain", "--ignored"],
                            cwd=REPO, capture_output=True, text=True, check=False).stdout
    return {line[3:] for line in listed.splitlines() if line[:2] in ("??", "!!")}


def pytest_sessionstart(session):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        session.config.stash[_BEFORE] = _untracked_in_checkout()


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("PYTEST_XDIST_WORKER") or _BEFORE not in session.config.stash:
        return
    new = sorted(_untracked_in_checkout() - session.config.stash[_BEFORE])
    if new:
        # A test wrote into the checkout (e.g. a cache flag left at its default).
        print(f"\nthe tests wrote into the checkout: {new[:20]}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set]()
