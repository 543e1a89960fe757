"""The report's PNG plots (matplotlib, Agg canvas; pyplot's global state untouched).

  wer_vs_round.png             held-out WER per evaluation, one line per
                               experiment (a second panel over epochs for
                               centralized runs)
  wer_vs_sparsity.png          final WER vs achieved sparsity, one series per
                               scheme (and structure)
  federated_vs_centralized.png final WER vs sparsity and WER over the fraction
                               of training done, federated vs centralized;
                               only when centralized runs exist
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:  # no import cycle at run time (report imports this module)
    from tff_prune.report import Experiment

WER_VS_ROUND = "wer_vs_round.png"
WER_VS_SPARSITY = "wer_vs_sparsity.png"
FEDERATED_VS_CENTRALIZED = "federated_vs_centralized.png"

# Points are labelled with their experiment's name while there are few.
_MAX_POINT_LABELS = 12
_PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
            "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def _new_figure(panels: int) -> tuple[Figure, list]:
    """A figure with `panels` side-by-side axes on an Agg canvas."""
    fig = Figure(figsize=(7.2 * panels, 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, panels, i + 1) for i in range(panels)]


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, bbox_inches="tight")
    return path


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _colors(experiments: Iterable[Experiment]) -> dict[str, str]:
    """One color per method, the same in every plot."""
    methods = sorted({e.method for e in experiments})
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}


def _method_label(exp: Experiment) -> str:
    return "dense (no pruning)" if exp.scheme == "none" else exp.method


def _plot_curves(ax, experiments: list[Experiment], colors: dict[str, str],
                 x_label: str) -> None:
    # Runs of one method share its color; their line styles tell them apart.
    seen: dict[str, int] = {}
    for exp in experiments:
        nth = seen[exp.method] = seen.get(exp.method, -1) + 1
        ax.plot([p.step for p in exp.curve], [p.wer for p in exp.curve],
                marker="o", markersize=3, color=colors[exp.method], label=exp.name,
                linestyle=("-", "--", ":", "-.")[nth % 4])
    ax.set_xlabel(x_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("held-out WER")
    ax.grid(alpha=0.3)
    _legend(ax)


def plot_wer_vs_round(experiments: list[Experiment], path: str) -> bool:
    """WER per evaluation; False (nothing written) when no run has an eval curve."""
    federated = [e for e in experiments if e.curve and not e.centralized]
    centralized = [e for e in experiments if e.curve and e.centralized]
    panels = [(runs, label) for runs, label in
              ((federated, "round"), (centralized, "epoch (centralized)")) if runs]
    if not panels:
        return False
    colors = _colors(experiments)
    fig, axes = _new_figure(len(panels))
    for ax, (runs, label) in zip(axes, panels):
        _plot_curves(ax, runs, colors, label)
    axes[0].set_title("Held-out WER over training")
    _save(fig, path)
    return True


def _final_points(experiments: list[Experiment]) -> list[Experiment]:
    return [e for e in experiments if e.wer is not None and e.achieved_sparsity is not None]


def _plot_final_by_method(ax, experiments: list[Experiment], colors: dict[str, str],
                          suffix: str = "", linestyle: str = "-",
                          marker: str = "o") -> None:
    """Final WER vs achieved sparsity, one series per method, sorted by sparsity."""
    by_method: dict[str, list[Experiment]] = {}
    for exp in experiments:
        by_method.setdefault(exp.method, []).append(exp)
    for method, runs in sorted(by_method.items()):
        runs.sort(key=lambda e: e.achieved_sparsity)
        ax.plot([e.achieved_sparsity for e in runs], [e.wer for e in runs],
                linestyle=linestyle, marker=marker, color=colors[method],
                label=_method_label(runs[0]) + suffix)
    if len(experiments) <= _MAX_POINT_LABELS:
        for exp in experiments:
            ax.annotate(exp.name, (exp.achieved_sparsity, exp.wer), fontsize="xx-small",
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlim(-0.03, 1.03)  # the whole range: runs compare across plots
    ax.set_xlabel("achieved sparsity (prunable kernels)")
    ax.set_ylabel("final held-out WER")
    ax.grid(alpha=0.3)


def plot_wer_vs_sparsity(experiments: list[Experiment], path: str) -> bool:
    """Final WER vs sparsity per scheme; False when no run has both numbers."""
    points = _final_points(experiments)
    if not points:
        return False
    colors = _colors(experiments)
    fig, (ax,) = _new_figure(1)
    federated = [e for e in points if not e.centralized]
    centralized = [e for e in points if e.centralized]
    _plot_final_by_method(ax, federated, colors)
    _plot_final_by_method(ax, centralized, colors, " · centralized", "--", "s")
    ax.set_title("WER vs sparsity per scheme")
    _legend(ax)
    _save(fig, path)
    return True


def _plot_progress(ax, experiments: list[Experiment], colors: dict[str, str]) -> None:
    """WER over the fraction of training done (rounds or epochs / total)."""
    for exp in experiments:
        if not exp.curve or not exp.total_steps:
            continue
        style = "--" if exp.centralized else "-"
        ax.plot([p.step / exp.total_steps for p in exp.curve], [p.wer for p in exp.curve],
                linestyle=style, marker="s" if exp.centralized else "o", markersize=3,
                color=colors[exp.method], label=f"{exp.name} ({exp.mode})")
    ax.set_xlabel("fraction of training done (round / rounds, epoch / epochs)")
    ax.set_ylabel("held-out WER")
    ax.grid(alpha=0.3)
    _legend(ax)


def plot_federated_vs_centralized(experiments: list[Experiment], path: str) -> bool:
    """Federated vs centralized runs; False when there is no centralized run."""
    if not any(e.centralized for e in experiments):
        return False
    colors = _colors(experiments)
    fig, (left, right) = _new_figure(2)
    points = _final_points(experiments)
    _plot_final_by_method(left, [e for e in points if not e.centralized], colors,
                          " · federated")
    _plot_final_by_method(left, [e for e in points if e.centralized], colors,
                          " · centralized", "--", "s")
    left.set_title("Federated vs centralized pruning")
    _legend(left)
    _plot_progress(right, experiments, colors)
    _save(fig, path)
    return True


_PLOTS = (
    (WER_VS_ROUND, plot_wer_vs_round, "no experiment has an eval.csv with WER"),
    (WER_VS_SPARSITY, plot_wer_vs_sparsity, "no experiment has a final WER and sparsity"),
    (FEDERATED_VS_CENTRALIZED, plot_federated_vs_centralized, "no centralized runs"),
)


def write_plots(experiments: list[Experiment], out_dir: str) -> tuple[list[str], list[str]]:
    """Writes every plot that has data into `out_dir`: (paths written, notes).

    A plot without data is not written, and a stale one from an earlier report
    is removed, so the directory never shows results that are no longer there.
    """
    written, notes = [], []
    for name, plot, reason in _PLOTS:
        path = os.path.join(out_dir, name)
        if plot(experiments, path):
            written.append(path)
            continue
        notes.append(f"{name} not written: {reason}")
        if os.path.isfile(path):
            os.remove(path)
    return written, notes
