"""What one experiment run is: its task, pruning, rounds and optimizers.

`ExperimentConfig` is built from flags by `tff_prune.program.experiment_flags` and
recorded (flattened) in the output dir, so that a rerun with the same settings
resumes and one with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow_federated as tff

from tff_prune.centralized import training
from tff_prune.federated import optimizers
from tff_prune.program import registry
from tff_prune.pruning import config as config_lib

OPTIMIZERS = optimizers.OPTIMIZERS
CLIENT_MODELS = ("compact", "masked")


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
    """Rounds, cohort and optimizers of a federated run."""

    total_rounds: int = 80
    clients_per_round: int = 10
    client_epochs: int = 3
    client_optimizer: str = "adam"
    client_learning_rate: float = 3e-3
    server_optimizer: str = "sgd"
    server_learning_rate: float = 1.0
    server_momentum: float = 0.9     # sgdm
    server_epsilon: float = 1e-3     # adam, yogi, lamb: FedAdam's adaptivity τ
    # Learning rates over rounds (`tff_prune.federated.optimizers.LearningRateSchedule`).
    client_lr_schedule: str = "constant"
    client_lr_warmup_rounds: int = 0
    client_lr_decay_rate: float = 1.0
    server_lr_schedule: str = "constant"
    server_lr_warmup_rounds: int = 0
    server_lr_decay_rate: float = 1.0
    clip_norm: float = 0.0
    eval_every_rounds: int = 10
    # A saved model of the same task and architecture to start from (a seed
    # model, `tff_prune.program.initial_model`); empty: fresh weights.
    initial_model: str = ""
    # What clients train once units are pruned: the physically smaller model
    # (where it applies, see `tff_prune.federated.compact_rounds`) or the masked one.
    client_model: str = "compact"
    # Where rounds run (not what they compute): remote TFF workers
    # (`host:port`), else this many owned local ones; clients build their
    # datasets from ids inside the workers where the task allows it.
    workers: tuple[str, ...] = ()
    local_workers: int = 1
    datasets_on_workers: bool = True
    worker_lost_after_s: float = 20.0
    # Client computations an owned worker runs at once: 0 = two per CPU core
    # of this machine, -1 = no limit (TFF's default: a whole cohort at once).
    worker_concurrency: int = 0

    def __post_init__(self):
        for name in ("total_rounds", "clients_per_round", "client_epochs",
                     "eval_every_rounds", "local_workers"):
            if getattr(self, name) < 1:
                raise config_lib.ConfigError(f"--{name} must be >= 1, not {getattr(self, name)}")
        for name in ("client_optimizer", "server_optimizer"):
            if getattr(self, name) not in OPTIMIZERS:
                raise config_lib.ConfigError(
                    f"--{name}={getattr(self, name)!r} is not one of: {', '.join(OPTIMIZERS)}")
        for name in ("client_learning_rate", "server_learning_rate"):
            if not getattr(self, name) > 0:
                raise config_lib.ConfigError(f"--{name} must be > 0")
        if self.worker_concurrency < -1:
            raise config_lib.ConfigError(
                f"--worker_concurrency must be >= -1, not {self.worker_concurrency}")
        if not self.worker_lost_after_s > 0:
            raise config_lib.ConfigError(
                f"--worker_lost_after_s must be > 0, not {self.worker_lost_after_s}")
        if self.clip_norm < 0:
            raise config_lib.ConfigError("--clip_norm must be >= 0 (0 = no clipping)")
        if not 0 <= self.server_momentum < 1:
            raise config_lib.ConfigError(
                f"--server_momentum must be in [0, 1), not {self.server_momentum}")
        if not self.server_epsilon > 0:
            raise config_lib.ConfigError(f"--server_epsilon must be > 0, not {self.server_epsilon}")
        for side in ("client", "server"):
            self.lr_schedule(side)  # raises ConfigError naming the flag
        if self.client_model not in CLIENT_MODELS:
            raise config_lib.ConfigError(
                f"--client_model={self.client_model!r} is not one of: {', '.join(CLIENT_MODELS)}")

    def lr_schedule(self, side: str) -> optimizers.LearningRateSchedule:
        """The `client` or `server` learning rate over rounds."""
        return optimizers.LearningRateSchedule(
            kind=getattr(self, f"{side}_lr_schedule"),
            base=getattr(self, f"{side}_learning_rate"),
            warmup_rounds=getattr(self, f"{side}_lr_warmup_rounds"),
            decay_rate=getattr(self, f"{side}_lr_decay_rate"),
            total_rounds=self.total_rounds, names=f"--{side}_lr_")

    def client_optimizer_built(self) -> tff.learning.optimizers.Optimizer:
        """The clients' optimizer (its rate is set each round from the schedule)."""
        return optimizers.build_optimizer(self.client_optimizer, self.client_learning_rate)

    def server_optimizer_built(self) -> tff.learning.optimizers.Optimizer:
        """The server's optimizer, at its scheduled rate every round."""
        return optimizers.scheduled(
            optimizers.build_optimizer(self.server_optimizer, self.server_learning_rate,
                                       momentum=self.server_momentum,
                                       epsilon=self.server_epsilon),
            self.lr_schedule("server"))



@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one run needs; built from flags by `run_experiment.py`.

    `task` is the config dataclass of the registered task `task_name`
    (its default config when None).
    """

    mode: str = "federated"
    root_output_dir: str = "experiments"
    experiment_name: str = "default"
    seed: int = 0
    checkpoint_every_rounds: int = 5
    task_name: str = registry.DEFAULT_TASK
    task: Any = None
    pruning: config_lib.PruningConfig = dataclasses.field(
        default_factory=config_lib.PruningConfig)
    federated: FederatedConfig = FederatedConfig()
    centralized: training.CentralizedConfig = training.CentralizedConfig()

    def __post_init__(self):
        if self.mode not in ("federated", "centralized"):
            raise config_lib.ConfigError(
                f"--mode={self.mode!r} is not one of: federated, centralized")
        if self.seed < 0:
            raise config_lib.ConfigError(f"--seed must be >= 0, not {self.seed}")
        if self.checkpoint_every_rounds < 1:
            raise config_lib.ConfigError("--checkpoint_every_rounds must be >= 1")
        if self.mode == "centralized" and self.federated.initial_model:
            raise config_lib.ConfigError(
                "--initial_model starts federated runs: drop it with --mode=centralized")
        if self.mode == "centralized" and self.pruning.policy == "client_vote":
            raise config_lib.ConfigError(
                "--mask_policy=client_vote needs clients: use server or fixed "
                "with --mode=centralized")
        try:
            spec = registry.get(self.task_name)
        except ValueError as e:
            raise config_lib.ConfigError(f"--task: {e}") from None
        if self.task is None:
            if spec.default_config is None:
                raise config_lib.ConfigError(f"--task={self.task_name} needs its config")
            object.__setattr__(self, "task", spec.default_config())

    @property
    def output_dir(self) -> str:
        return os.path.join(self.root_output_dir, self.experiment_name)


def jsonable(value: Any) -> Any:
    """`value` (a config, as `dataclasses.asdict` gives it) as plain JSON types."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "get_config"):
        return value.get_config()
    return str(value)
