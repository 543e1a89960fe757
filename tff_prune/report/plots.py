"""The report's PNG plots (matplotlib, Agg canvas; pyplot's global state untouched).

Task-agnostic: each experiment is plotted with its task's headline metric
(the first of its summary's metrics), and each headline metric found among
the experiments gets its own plots, named after it:

  {metric}_vs_round.png          held-out headline metric per evaluation, one
                                 line per experiment (a second panel over
                                 epochs for centralized runs); e.g.
                                 wer_vs_round.png, accuracy_vs_round.png
  {metric}_vs_sparsity.png       final headline metric vs achieved sparsity,
                                 one series per scheme (and structure)
  federated_vs_centralized.png   final headline metric vs sparsity and over
                                 the fraction of training done, federated vs
                                 centralized; only when centralized runs
                                 exist. With more than one headline metric,
                                 one per metric: federated_vs_centralized_{metric}.png

Axes and titles name the metric upper-cased (`WER`, `ACCURACY`), with
"(higher is better)" for metrics where it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Callable, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tff_prune.report.runs import Experiment, MetricInfo

VS_ROUND = "{metric}_vs_round.png"
VS_SPARSITY = "{metric}_vs_sparsity.png"
FEDERATED_VS_CENTRALIZED = "federated_vs_centralized.png"
FEDERATED_VS_CENTRALIZED_OF = "federated_vs_centralized_{metric}.png"
# Every file name the plots above can have: a stale one is removed.
_PLOT_NAME = re.compile(r"^(?:[\w.-]+_vs_(?:round|sparsity)|federated_vs_centralized(?:_[\w.-]+)?)\.png$")

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


def _better(metric: MetricInfo) -> str:
    return "" if metric.lower_is_better else " (higher is better)"


def _y_label(metric: MetricInfo, final: bool = False) -> str:
    """`held-out WER`, `final held-out ACCURACY (higher is better)`."""
    return f"{'final ' if final else ''}held-out {metric.label}{_better(metric)}"


def _plot_curves(ax, experiments: list[Experiment], colors: dict[str, str],
                 x_label: str, metric: MetricInfo) -> None:
    # Runs of one method share its color; their line styles tell them apart.
    seen: dict[str, int] = {}
    for exp in experiments:
        nth = seen[exp.method] = seen.get(exp.method, -1) + 1
        ax.plot([p.step for p in exp.curve], [p.value for p in exp.curve],
                marker="o", markersize=3, color=colors[exp.method], label=exp.name,
                linestyle=("-", "--", ":", "-.")[nth % 4])
    ax.set_xlabel(x_label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(_y_label(metric))
    ax.grid(alpha=0.3)
    _legend(ax)


def plot_metric_vs_round(experiments: list[Experiment], metric: MetricInfo, path: str,
                         colors: Optional[dict[str, str]] = None) -> bool:
    """The headline `metric` per evaluation of the experiments whose headline
    it is; False (nothing written) when none of them has an eval curve."""
    runs = [e for e in experiments if e.headline == metric.name and e.curve]
    federated = [e for e in runs if not e.centralized]
    centralized = [e for e in runs if e.centralized]
    panels = [(group, label) for group, label in
              ((federated, "round"), (centralized, "epoch (centralized)")) if group]
    if not panels:
        return False
    colors = colors or _colors(experiments)
    fig, axes = _new_figure(len(panels))
    for ax, (group, label) in zip(axes, panels):
        _plot_curves(ax, group, colors, label, metric)
    axes[0].set_title(f"Held-out {metric.label} over training{_better(metric)}")
    _save(fig, path)
    return True


def _final_points(experiments: list[Experiment], metric: MetricInfo) -> list[Experiment]:
    """The experiments with `metric` as headline, a final value and a sparsity."""
    return [e for e in experiments if e.headline == metric.name
            and e.score(metric.name) is not None and e.achieved_sparsity is not None]


def _plot_final_by_method(ax, experiments: list[Experiment], colors: dict[str, str],
                          metric: MetricInfo, suffix: str = "", linestyle: str = "-",
                          marker: str = "o") -> None:
    """Final `metric` vs achieved sparsity, one series per method, sorted by sparsity."""
    by_method: dict[str, list[Experiment]] = {}
    for exp in experiments:
        by_method.setdefault(exp.method, []).append(exp)
    for method, runs in sorted(by_method.items()):
        runs.sort(key=lambda e: e.achieved_sparsity)
        ax.plot([e.achieved_sparsity for e in runs], [e.score(metric.name) for e in runs],
                linestyle=linestyle, marker=marker, color=colors[method],
                label=_method_label(runs[0]) + suffix)
    if len(experiments) <= _MAX_POINT_LABELS:
        for exp in experiments:
            ax.annotate(exp.name, (exp.achieved_sparsity, exp.score(metric.name)),
                        fontsize="xx-small", textcoords="offset points", xytext=(3, 3))
    ax.set_xlim(-0.03, 1.03)  # the whole range: runs compare across plots
    ax.set_xlabel("achieved sparsity (prunable kernels)")
    ax.set_ylabel(_y_label(metric, final=True))
    ax.grid(alpha=0.3)


def plot_metric_vs_sparsity(experiments: list[Experiment], metric: MetricInfo, path: str,
                            colors: Optional[dict[str, str]] = None) -> bool:
    """Final headline `metric` vs sparsity per scheme; False when no run with
    that headline has both numbers."""
    points = _final_points(experiments, metric)
    if not points:
        return False
    colors = colors or _colors(experiments)
    fig, (ax,) = _new_figure(1)
    federated = [e for e in points if not e.centralized]
    centralized = [e for e in points if e.centralized]
    _plot_final_by_method(ax, federated, colors, metric)
    _plot_final_by_method(ax, centralized, colors, metric, " · centralized", "--", "s")
    ax.set_title(f"{metric.label} vs sparsity per scheme{_better(metric)}")
    _legend(ax)
    _save(fig, path)
    return True


def _plot_progress(ax, experiments: list[Experiment], colors: dict[str, str],
                   metric: MetricInfo) -> None:
    """The headline metric over the fraction of training done (rounds or epochs / total)."""
    for exp in experiments:
        if not exp.curve or not exp.total_steps:
            continue
        style = "--" if exp.centralized else "-"
        ax.plot([p.step / exp.total_steps for p in exp.curve], [p.value for p in exp.curve],
                linestyle=style, marker="s" if exp.centralized else "o", markersize=3,
                color=colors[exp.method], label=f"{exp.name} ({exp.mode})")
    ax.set_xlabel("fraction of training done (round / rounds, epoch / epochs)")
    ax.set_ylabel(_y_label(metric))
    ax.grid(alpha=0.3)
    _legend(ax)


def plot_federated_vs_centralized(experiments: list[Experiment], metric: MetricInfo,
                                  path: str,
                                  colors: Optional[dict[str, str]] = None) -> bool:
    """Federated vs centralized runs with headline `metric`; False when there
    is no centralized run among them."""
    runs = [e for e in experiments if e.headline == metric.name]
    if not any(e.centralized for e in runs):
        return False
    colors = colors or _colors(experiments)
    fig, (left, right) = _new_figure(2)
    points = _final_points(runs, metric)
    _plot_final_by_method(left, [e for e in points if not e.centralized], colors, metric,
                          " · federated")
    _plot_final_by_method(left, [e for e in points if e.centralized], colors, metric,
                          " · centralized", "--", "s")
    left.set_title(f"Federated vs centralized pruning: {metric.label}{_better(metric)}")
    _legend(left)
    _plot_progress(right, runs, colors, metric)
    _save(fig, path)
    return True


def headline_metrics(experiments: list[Experiment]) -> list[MetricInfo]:
    """The experiments' headline metrics, by name, in order of first appearance."""
    seen: dict[str, MetricInfo] = {}
    for exp in experiments:
        seen.setdefault(exp.headline, exp.metrics[0])
    return list(seen.values())


def _planned(experiments: list[Experiment]) -> list[tuple[str, Callable[..., bool],
                                                           MetricInfo, str]]:
    """(file name, plot function, metric, reason when not written) of every
    plot the report makes for these experiments."""
    metrics = headline_metrics(experiments)
    plans = []
    for metric in metrics:
        label = metric.label
        plans.append((VS_ROUND.format(metric=metric.name), plot_metric_vs_round, metric,
                      f"no experiment has an eval.csv with {label}"))
        plans.append((VS_SPARSITY.format(metric=metric.name), plot_metric_vs_sparsity, metric,
                      f"no experiment has a final {label} and sparsity"))
    for metric in metrics:
        if len(metrics) == 1:
            plans.append((FEDERATED_VS_CENTRALIZED, plot_federated_vs_centralized, metric,
                          "no centralized runs"))
        else:
            plans.append((FEDERATED_VS_CENTRALIZED_OF.format(metric=metric.name),
                          plot_federated_vs_centralized, metric,
                          f"no centralized runs with {metric.label}"))
    return plans


def write_plots(experiments: list[Experiment], out_dir: str) -> tuple[list[str], list[str]]:
    """Writes every plot that has data into `out_dir`: (paths written, notes).

    A plot without data is not written (with a note), and a stale one from an
    earlier report (also of a metric no longer among the experiments) is
    removed, so the directory never shows results that are no longer there.
    """
    colors = _colors(experiments)
    written, notes = [], []
    for name, plot, metric, reason in _planned(experiments):
        path = os.path.join(out_dir, name)
        if plot(experiments, metric, path, colors):
            written.append(path)
        else:
            notes.append(f"{name} not written: {reason}")
    kept = {os.path.basename(p) for p in written}
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if _PLOT_NAME.match(name) and name not in kept and os.path.isfile(path):
            os.remove(path)
    return written, notes
