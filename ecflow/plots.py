"""Figures: every matplotlib call of ecflow lives here.

Functions return :class:`matplotlib.figure.Figure` objects built without pyplot (no GUI backend
is needed); writers save them as PNG files atomically. Sections: recovery figures, then the
sweep figures (4B, 4C, 5B of Martinelli et al., ICML 2024).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecflow.engines.base import NEAR_ZERO_LOSS
from ecflow.errors import InputError
from ecflow.sweep.config import SUCCESS_RMSE


# =================================================================================================
# Recovery figures (issue 5): dendrogram with the chosen cut, clusters, student losses.
# Each takes plain results (ClusterResult, losses) and returns a Figure; see write_recovery_plots.
# =================================================================================================

_KEPT, _SMALL, _UNALIGNED = "#1a9850", "#4575b4", "#d73027"  # the paper's green, blue, red


def recovery_dendrogram(clustering: Any):
    """Dendrogram of the neurons' clustering with the chosen cut height (paper figure 3C).

    Parameters
    ----------
    clustering : ecflow.clustering.ClusterResult

    Returns
    -------
    matplotlib.figure.Figure
        Leaves coloured by the fate of their cluster: kept (green), too few students (blue),
        unaligned (red); the cut as a dashed line.
    """
    from matplotlib.figure import Figure
    from scipy.cluster import hierarchy

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if clustering.linkage.shape[0] == 0:
        ax.text(0.5, 0.5, "a single neuron: nothing to cluster", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    colour = {c.label: (_KEPT if c.kept else _SMALL if not c.big else _UNALIGNED)
              for c in clustering.clusters}
    n = clustering.labels.size
    leaf_colour = [colour[int(clustering.labels[i])] for i in range(n)]
    # A merge takes its cluster's colour when both sides belong to one cluster of the cut.
    link_colour = {}
    members = {i: {i} for i in range(n)}
    for k, (a, b, _, _) in enumerate(clustering.linkage):
        node = n + k
        members[node] = members[int(a)] | members[int(b)]
        labels = {int(clustering.labels[i]) for i in members[node]}
        link_colour[node] = colour[labels.pop()] if len(labels) == 1 else "#999999"
    hierarchy.dendrogram(
        clustering.linkage, ax=ax, no_labels=n > 60,
        link_color_func=lambda node: link_colour.get(node, leaf_colour[node] if node < n else "#999999"),
    )
    ax.axhline(clustering.height, color="orange", linestyle="--",
               label=f"cut at {clustering.height:.3g}")
    kept = sum(c.kept for c in clustering.clusters)
    ax.set_title(f"{n} neurons of {clustering.n_students} students, "
                 f"{kept} clusters kept ({clustering.symmetry.value})")
    ax.set_ylabel("average-linkage distance")
    ax.legend(loc="upper right")
    return fig


def recovery_clusters(clustering: Any, *, beta_deg: float | None = None):
    """Distinct students per cluster against its median within-cluster angle.

    Parameters
    ----------
    clustering : ecflow.clustering.ClusterResult
    beta_deg : float, optional
        Alignment threshold drawn as a vertical line.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    _cluster_scatter(ax, clustering, beta_deg)
    ax.set_title("clusters at the chosen cut (marker area ~ size)")
    return fig


def _cluster_scatter(ax: Any, clustering: Any, beta_deg: float | None) -> None:
    """Distinct students per cluster against its median angle, coloured by the cluster's fate,
    with the β line (the shallow figure and each layer's panel)."""
    for fate, colour in (("kept", _KEPT), ("too few students", _SMALL),
                         ("unaligned", _UNALIGNED)):
        cs = [c for c in clustering.clusters if c.reason == fate]
        if not cs:
            continue
        # A tiny floor puts exactly aligned clusters (angle 0) on the log axis.
        ang = np.maximum([c.median_angle_deg for c in cs], 1e-12)
        ax.scatter(ang, [len(c.students) for c in cs], s=[12 + 4 * c.size for c in cs],
                   color=colour, alpha=0.7, label=f"{fate} ({len(cs)})")
    if beta_deg is not None:
        ax.axvline(beta_deg, color=_UNALIGNED, linestyle=":", label=f"β = {beta_deg:g}°")
    ax.set_xscale("log")
    ax.set_xlabel("median within-cluster angle (degrees)")
    ax.set_ylabel("distinct students in the cluster")
    ax.legend(loc="best", fontsize="small")


def recovery_student_losses(losses: Sequence[float]):
    """Final training MSE of each student, sorted, on a log scale.

    Parameters
    ----------
    losses : sequence of float
        One per student; non-finite losses are shown at the top of the axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    v = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(v)
    # Exact zeros cannot sit on a log axis; 1e-33 is below any float64 MSE of order-1 outputs.
    shown = np.where(finite, np.maximum(v, 1e-33), np.nan)
    order = np.argsort(np.where(finite, shown, np.inf))
    ax.scatter(np.arange(v.size), shown[order], color=_KEPT)
    ax.set_yscale("log")
    ax.set_xlabel("student (sorted by loss)")
    ax.set_ylabel("final training MSE")
    bad = int((~finite).sum())
    ax.set_title(f"{v.size} students" + (f", {bad} without a finite loss" if bad else ""))
    return fig


def recovery_layer(report: Any, *, beta_deg: float | None = None, bias_std_max: float = 0.01):
    """One layer of a deep (layer-wise) recovery: its clusters, its students, the bias rule.

    Parameters
    ----------
    report : ecflow.layerwise.LayerReport
    beta_deg : float, optional
        Alignment threshold drawn on the cluster panel.
    bias_std_max : float, default=0.01
        The bias rule's threshold, drawn on the bias panel.

    Returns
    -------
    matplotlib.figure.Figure
        Left: distinct students per cluster against its median angle (kept green, too few
        students blue, unaligned red). Middle: the stage's student losses, sorted. Right: the
        spread across students of the learned bias of each neuron of the layer below, with
        the threshold above which a neuron is dropped (layers above the first).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_c, ax_l, ax_b = fig.subplots(1, 3)
    clustering = report.clustering
    if clustering is not None:
        _cluster_scatter(ax_c, clustering, beta_deg)
    else:
        ax_c.set_xlabel("median within-cluster angle (degrees)")
        ax_c.set_ylabel("distinct students in the cluster")
    ax_c.set_title(f"layer {report.layer}: {report.n_kept_clusters} clusters kept, "
                   f"size {report.size}")
    v = np.asarray(report.student_losses, dtype=np.float64)
    shown = np.where(np.isfinite(v), np.maximum(v, 1e-33), np.nan)
    ax_l.scatter(np.arange(v.size), np.sort(shown), color=_KEPT)
    ax_l.set_yscale("log")
    ax_l.set_xlabel("student (sorted by loss)")
    ax_l.set_ylabel("final training MSE")
    ax_l.set_title("students " + "-".join(map(str, report.student_hidden)))
    if report.bias_std:
        s = np.maximum(np.asarray(report.bias_std, dtype=np.float64), 1e-18)
        colours = [_UNALIGNED if k in report.dropped_below else _KEPT for k in range(s.size)]
        ax_b.bar(np.arange(s.size), s, color=colours)
        ax_b.axhline(bias_std_max, color=_UNALIGNED, linestyle=":",
                     label=f"drop above {bias_std_max:g}")
        ax_b.set_yscale("log")
        ax_b.legend(loc="best", fontsize="small")
        ax_b.set_xlabel(f"neuron of layer {report.layer - 1}")
        ax_b.set_ylabel("std of its learned bias across students")
        ax_b.set_title(f"bias rule: {len(report.dropped_below)} dropped")
    else:
        ax_b.text(0.5, 0.5, "first layer: nothing frozen below", ha="center", va="center",
                  transform=ax_b.transAxes)
        ax_b.set_axis_off()
    return fig


def width_search_curve(search: Any):
    """Loss against student width, one curve per candidate activation (paper figure A.2B).

    Parameters
    ----------
    search : ecflow.width_search.WidthSearch

    Returns
    -------
    matplotlib.figure.Figure
        Every short student as a dot, the best one per width as a line, the near-zero
        threshold dashed and the width found dotted.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    names = [r.activation for r in search.ranking]
    if not names:
        ax.text(0.5, 0.5, "no student was trained", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    for k, name in enumerate(names):
        colour = f"C{k % 10}"
        trials = [t for t in search.trials if t.activation == name]
        for t in trials:
            v = np.asarray(t.losses, dtype=np.float64)
            v = v[np.isfinite(v)]
            # Exact zeros cannot sit on a log axis; 1e-33 is below any float64 MSE here.
            ax.scatter(np.full(v.size, t.width), np.maximum(v, 1e-33), s=10, alpha=0.35,
                       color=colour)
        widths, best = search.curve(name)
        lw = 2.5 if name == search.activation else 1.0
        ax.plot(widths, np.maximum(best, 1e-33), marker="o", lw=lw, color=colour, label=name)
    ax.axhline(search.threshold, color="grey", linestyle="--",
               label=f"near-zero loss ({search.threshold:.0e})")
    if search.width is not None:
        ax.axvline(search.width, color="black", linestyle=":",
                   label=f"width found: {search.width} ({search.activation})")
    _width_axes(ax, search.trials)
    ax.set_xlabel("student width")
    ax.set_ylabel("training MSE of short students")
    ax.set_title("width search (paper Fig. A.2B)")
    ax.legend(loc="best", fontsize="small", ncols=2 if len(names) > 4 else 1)
    return fig


def _width_axes(ax, trials) -> None:
    """Widths on a log2 axis ticked at the widths tried, losses on a log axis."""
    ax.set_xscale("log", base=2)
    widths = sorted({t.width for t in trials})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.minorticks_off()
    ax.set_yscale("log")


def depth_search_curve(search: Any):
    """Loss against width, one curve per depth, and the best loss against depth (the depth
    search of ``--hidden auto --depth auto``).

    Parameters
    ----------
    search : ecflow.width_search.WidthSearch
        A search with ``depth_auto``.

    Returns
    -------
    matplotlib.figure.Figure
        Left: the best short student per width (over the candidate activations), one line per
        depth, the near-zero threshold dashed. Right: the best loss per depth, the depth found
        dotted.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_w, ax_d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    if not search.trials:
        for ax in (ax_w, ax_d):
            ax.text(0.5, 0.5, "no student was trained", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
        return fig
    for k, depth in enumerate(search.depths):
        widths = sorted({t.width for t in search.trials if t.depth == depth})
        best = [min(t.best_loss for t in search.trials if t.depth == depth and t.width == w)
                for w in widths]
        # Exact zeros cannot sit on a log axis; 1e-33 is below any float64 MSE here.
        ax_w.plot(widths, np.maximum(best, 1e-33), marker="o", color=f"C{k % 10}",
                  lw=2.5 if depth == search.depth else 1.0, label=f"{depth} hidden layer(s)")
    ax_w.axhline(search.threshold, color="grey", linestyle="--",
                 label=f"near-zero loss ({search.threshold:.0e})")
    _width_axes(ax_w, search.trials)
    ax_w.set_xlabel("student width (every hidden layer)")
    ax_w.set_ylabel("training MSE of the best short student")
    ax_w.set_title("loss against width, per depth")
    ax_w.legend(loc="best", fontsize="small")
    depths, best = search.depth_curve()
    ax_d.plot(depths, np.maximum(best, 1e-33), marker="o", color="black")
    ax_d.axhline(search.threshold, color="grey", linestyle="--")
    if search.depth is not None:
        ax_d.axvline(search.depth, color="black", linestyle=":",
                     label=f"depth found: {search.depth} (width {search.width})")
        ax_d.legend(loc="best", fontsize="small")
    ax_d.set_xticks(depths, [str(d) for d in depths])
    ax_d.set_yscale("log")
    ax_d.set_xlabel("hidden layers")
    ax_d.set_ylabel("best training MSE at any width")
    ax_d.set_title("loss against depth")
    return fig


def write_recovery_plots(recovery: Any, folder: str | os.PathLike, *,
                         beta_deg: float | None = None, bias_std_max: float = 0.01) -> list[Path]:
    """Write the recovery figures as PNGs into ``folder`` (created if missing).

    Parameters
    ----------
    recovery : ecflow.recover.Recovery
    folder : path-like
    beta_deg : float, optional
        Alignment threshold to draw on the cluster figure.
    bias_std_max : float, default=0.01
        The bias rule's threshold (deep recoveries).

    Returns
    -------
    list of Path
        ``dendrogram.png``, ``clusters.png`` (when the recovery holds a clustering; the first
        layer's for a deep recovery), ``student_losses.png``, ``width_search.png`` (after
        ``--hidden auto``), ``depth_search.png`` (after ``--depth auto``) and one
        ``layer-<l>.png`` per hidden layer of a deep recovery (:func:`recovery_layer`).
    """
    from ecflow.networks import atomic_path

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    if recovery.clustering is not None:
        figures.append(("dendrogram.png", recovery_dendrogram(recovery.clustering)))
        figures.append(("clusters.png", recovery_clusters(recovery.clustering, beta_deg=beta_deg)))
    figures.append(("student_losses.png", recovery_student_losses(recovery.student_losses)))
    search = getattr(recovery, "width_search", None)
    if search is not None:
        figures.append(("width_search.png", width_search_curve(search)))
        if getattr(search, "depth_auto", False):
            figures.append(("depth_search.png", depth_search_curve(search)))
    for report in getattr(recovery, "layers", ()):
        figures.append((f"layer-{report.layer}.png",
                        recovery_layer(report, beta_deg=beta_deg, bias_std_max=bias_std_max)))
    written = []
    for name, fig in figures:
        path = folder / name
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120)
        written.append(path)
    return written


# =================================================================================================
# Sweep figures (figures 4B, 4C and 5B of the paper), drawn from the sweep's CSV tables.
# Owned by the sweep (issue 8); they take rows as returned by ecflow.sweep.read_table.
# =================================================================================================

_SWEEP_DARK = "#08306b"  # the paper's dark blue for near-zero loss
_SWEEP_LOG_RANGE = (-14.0, 0.0)  # colour scale of log10 losses, saturating at both ends


def _sweep_grid(rows: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    return sorted({int(r["d_in"]) for r in rows}), sorted({int(r["r"]) for r in rows})


def _sweep_log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(np.asarray(values, dtype=np.float64))
    return np.clip(np.nan_to_num(out, nan=_SWEEP_LOG_RANGE[1], neginf=_SWEEP_LOG_RANGE[0]),
                   *_SWEEP_LOG_RANGE)


def _sweep_colors(values: np.ndarray, threshold: float):
    """RGBA per value: log10 on a yellow-red scale, dark blue at or below ``threshold``, grey
    where missing (NaN: nothing reconstructed)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize, to_rgba

    values = np.asarray(values, dtype=np.float64)
    cmap = colormaps["YlOrRd"].with_extremes(under=_SWEEP_DARK)
    norm = Normalize(*_SWEEP_LOG_RANGE)
    colors = np.array([cmap(norm(v)) for v in _sweep_log10(values)]).reshape(-1, 4)
    colors[values <= threshold] = to_rgba(_SWEEP_DARK)
    colors[np.isnan(values)] = to_rgba("0.8")
    return colors, cmap, norm


def _teacher_rows(ax, n_teachers: int, *, labelled: bool) -> None:
    """One tick per teacher row, numbered in the first column of panels."""
    ax.set_yticks(range(n_teachers), [str(t) for t in range(n_teachers)] if labelled else [])
    ax.tick_params(axis="y", length=0, labelsize="small")


def _sweep_empty(fig, text: str):
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _sweep_colorbar(fig, axes, cmap, norm, label: str) -> None:
    from matplotlib.cm import ScalarMappable

    sm = ScalarMappable(norm=norm, cmap=cmap)
    # The 'min' extension is the dark-blue near-zero class.
    cb = fig.colorbar(sm, ax=axes, shrink=0.8, pad=0.02, extend="min")
    cb.set_label(label)


def sweep_fig4b(results: Sequence[Mapping[str, Any]], *, threshold: float = NEAR_ZERO_LOSS):
    """Figure 4B: the final loss of every ρ = 1 student, one row of dots per teacher.

    Panels are the cells of the grid (columns d_in, rows r); in a panel each row is a teacher
    and each dot a student seed, dark blue where the MSE is at most ``threshold``.

    Parameters
    ----------
    results : sequence of mapping
        Rows of ``results.csv`` (``d_in, r, teacher, rho, student, loss``).
    threshold : float, default=1e-14

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    rows = [r for r in results if int(r["rho"]) == 1]
    fig = Figure(figsize=(10, 6), layout="constrained")
    if not rows:
        return _sweep_empty(fig, "no ρ = 1 students finished yet")
    d_ins, rs = _sweep_grid(rows)
    axes = fig.subplots(len(rs), len(d_ins), squeeze=False)
    cmap = norm = None
    for i, r in enumerate(rs):
        for j, d in enumerate(d_ins):
            ax = axes[i][j]
            cell = [row for row in rows if row["r"] == r and row["d_in"] == d]
            if cell:
                loss = np.array([float(row["loss"]) for row in cell])
                colors, cmap, norm = _sweep_colors(loss, threshold)
                ax.scatter([row["student"] for row in cell], [row["teacher"] for row in cell],
                           c=colors, s=18, edgecolors="none")
            n_teachers = max(int(row["teacher"]) for row in rows) + 1
            ax.set_ylim(n_teachers - 0.5, -0.5)
            ax.set_xticks([])
            _teacher_rows(ax, n_teachers, labelled=j == 0)
            if i == 0:
                ax.set_title(f"$d_{{in}}$ = {d}")
            if j == 0:
                ax.set_ylabel(f"r = {r}\nteacher")
            if i == len(rs) - 1:
                ax.set_xlabel("student seed")
    if cmap is not None:
        _sweep_colorbar(fig, axes, cmap, norm, "log$_{10}$ loss (dark blue: ≤ %g)" % threshold)
    fig.suptitle("Students of the teacher's size (ρ = 1): final loss")
    return fig


def sweep_fig4c(results: Sequence[Mapping[str, Any]], *, threshold: float = NEAR_ZERO_LOSS):
    """Figure 4C: fraction of students reaching near-zero loss against ρ, one line per r/d_in.

    Parameters
    ----------
    results : sequence of mapping
        Rows of ``results.csv`` (``d_in, r, rho, loss``).
    threshold : float, default=1e-14
        A student with MSE at most this reached near-zero loss.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from fractions import Fraction

    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    if not results:
        return _sweep_empty(fig, "no students finished yet")
    by_ratio: dict[Fraction, dict[int, list[bool]]] = {}
    for row in results:
        ratio = Fraction(int(row["r"]), int(row["d_in"]))
        by_ratio.setdefault(ratio, {}).setdefault(int(row["rho"]), []).append(
            float(row["loss"]) <= threshold
        )
    ax = fig.add_subplot(1, 1, 1)
    ratios = sorted(by_ratio)
    cmap = colormaps["viridis"]
    logs = np.log2([float(q) for q in ratios])
    span = max(logs.max() - logs.min(), 1e-12)
    for q, lq in zip(ratios, logs):
        rhos = sorted(by_ratio[q])
        frac = [np.mean(by_ratio[q][rho]) for rho in rhos]
        ax.plot(rhos, frac, "o-", color=cmap(0.9 * (lq - logs.min()) / span), label=f"{q}")
    all_rhos = sorted({int(row["rho"]) for row in results})
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_rhos, [str(x) for x in all_rhos])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("overparameterisation ρ")
    ax.set_ylabel(f"fraction of students with loss ≤ {threshold:g}")
    ax.legend(title="r / $d_{in}$", fontsize="small", ncols=2 if len(ratios) > 6 else 1)
    ax.grid(alpha=0.3)
    return fig


def sweep_fig5b(recoveries: Sequence[Mapping[str, Any]], *, threshold: float = SUCCESS_RMSE):
    """Figure 5B: training RMSE after Expand-and-Cluster for every teacher and ρ.

    Panels are the cells of the grid (columns d_in, rows r); in a panel each row is a teacher
    and each short horizontal bar one ρ, dark blue where the RMSE is at most ``threshold``;
    a cross marks a reconstruction whose hidden-layer size differs from the teacher's, grey one
    where nothing was reconstructed (no cluster kept).

    Parameters
    ----------
    recoveries : sequence of mapping
        Rows of ``recoveries.csv`` (``d_in, r, teacher, rho, rmse_train, recovered_size,
        teacher_size``).
    threshold : float, default=SUCCESS_RMSE
        The RMSE of a successful recovery (:data:`ecflow.sweep.SUCCESS_RMSE`, 1e-14).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6), layout="constrained")
    if not recoveries:
        return _sweep_empty(fig, "no recoveries finished yet")
    d_ins, rs = _sweep_grid(recoveries)
    rhos = sorted({int(row["rho"]) for row in recoveries})
    axes = fig.subplots(len(rs), len(d_ins), squeeze=False)
    cmap = norm = None
    for i, r in enumerate(rs):
        for j, d in enumerate(d_ins):
            ax = axes[i][j]
            cell = [row for row in recoveries if row["r"] == r and row["d_in"] == d]
            if cell:
                rmse = np.array([float(row["rmse_train"]) for row in cell])
                colors, cmap, norm = _sweep_colors(rmse, threshold)
                for row, color in zip(cell, colors):
                    x = rhos.index(int(row["rho"]))
                    ax.plot([x - 0.35, x + 0.35], [row["teacher"]] * 2, color=color, lw=4,
                            solid_capstyle="butt")
                    if row["recovered_size"] != row["teacher_size"]:
                        ax.plot(x, row["teacher"], "x", color="k", ms=4)
            ax.set_xlim(-0.6, len(rhos) - 0.4)
            n_teachers = max(int(row["teacher"]) for row in recoveries) + 1
            ax.set_ylim(n_teachers - 0.5, -0.5)
            _teacher_rows(ax, n_teachers, labelled=j == 0)
            ax.set_xticks(range(len(rhos)), [str(x) for x in rhos] if i == len(rs) - 1 else [])
            if i == 0:
                ax.set_title(f"$d_{{in}}$ = {d}")
            if j == 0:
                ax.set_ylabel(f"r = {r}\nteacher")
            if i == len(rs) - 1:
                ax.set_xlabel("ρ")
    if cmap is not None:
        _sweep_colorbar(
            fig, axes, cmap, norm, "log$_{10}$ RMSE after E&C (dark blue: ≤ %g)" % threshold
        )
    fig.suptitle(
        "Expand-and-Cluster: training RMSE of the reconstruction\n"
        "(×: size differs from the teacher's; grey: nothing reconstructed)"
    )
    return fig


def write_sweep_figures(out: str | os.PathLike) -> list[Path]:
    """Draw figures 4B, 4C and 5B of a sweep directory from its tables and write them as PNGs.

    Parameters
    ----------
    out : path-like
        A sweep directory holding ``results.csv`` and ``recoveries.csv``.

    Returns
    -------
    list of Path
        ``fig4b.png``, ``fig4c.png`` and ``fig5b.png`` in ``out``; no ``fig4b.png`` when the
        sweep has no ρ = 1 (the figure shows only those students).
    """
    from ecflow.networks import atomic_path
    from ecflow.sweep import read_sweep_config, read_table

    out = Path(out)
    results = read_table(out / "results.csv")
    recoveries = read_table(out / "recoveries.csv")
    config = read_sweep_config(out)
    figures = [("fig4c.png", sweep_fig4c(results)), ("fig5b.png", sweep_fig5b(recoveries))]
    if config is None or 1 in config.rho:
        figures.insert(0, ("fig4b.png", sweep_fig4b(results)))
    written = []
    for name, fig in figures:
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        written.append(path)
    return written


# =================================================================================================
# Symmetry figures (issue 6): hyperplane plots of 2-D input networks in the style of the paper's
# Fig. 4A and A.6 — the output as a contour, each hidden neuron's hyperplane w·x + b = 0 dashed,
# and its weight vector w as an arrow coloured by the sign of its output weight.
# =================================================================================================

_POSITIVE, _NEGATIVE, _NEAR_ZERO = "#d73027", "#4575b4", "white"  # the paper's red, blue, white


def _arrow_colour(a: float, scale: float) -> str:
    if abs(a) <= 1e-6 * scale:
        return _NEAR_ZERO
    return _POSITIVE if a > 0 else _NEGATIVE


def draw_hyperplanes(ax, network: Any, *, half_width: float | None = None,
                     labels: Sequence[str] | None = None, title: str | None = None,
                     n_grid: int = 161, margin: float = 1.5) -> None:
    """Draw a one-hidden-layer network of 2-D input on ``ax`` (paper Figs. 4A and A.6).

    Parameters
    ----------
    ax : matplotlib Axes
    network : MLP
        ``d_in = 2``; the first output is shown.
    half_width : float, optional
        The input box ``[-h, h]²`` (outlined); default √3.
    labels : sequence of str, optional
        One text per hidden neuron, written at the arrow's tip (e.g. its index).
    title : str, optional
    n_grid : int, default=161
        Contour resolution per axis.
    margin : float, default=1.5
        Plotted extent as a multiple of ``half_width`` (off-bound hyperplanes stay visible).
    """
    from ecflow.teachers import INPUT_HALF_WIDTH

    if network.d_in != 2 or len(network.layers) != 2:
        raise InputError(f"hyperplane plots need a 2-D input, one-hidden-layer network, "
                         f"got sizes {network.sizes}")
    h = INPUT_HALF_WIDTH if half_width is None else float(half_width)
    lim = margin * h
    g = np.linspace(-lim, lim, n_grid)
    gx, gy = np.meshgrid(g, g)
    out = network.forward(np.column_stack([gx.ravel(), gy.ravel()]))[:, 0].reshape(gx.shape)
    if np.ptp(out) > 1e-9 * max(1.0, float(np.abs(out).max())):
        ax.contourf(gx, gy, out, levels=20, cmap="Greys", alpha=0.6)
    # else: a constant output (e.g. zero-type neurons alone); contours would draw rounding noise
    ax.plot([-h, h, h, -h, -h], [-h, -h, h, h, -h], color="k", lw=0.8)
    W, b = network.layers[0].weight, network.layers[0].bias
    a = network.layers[1].weight[0]
    strength = np.abs(a) * np.linalg.norm(np.column_stack([W, b]), axis=1)
    scale = float(strength.max()) if strength.size else 1.0
    w_max = float(np.linalg.norm(W, axis=1).max())
    for i, (w, bi) in enumerate(zip(W, b)):
        nw = float(np.linalg.norm(w))
        if nw <= 1e-9 * w_max:
            continue  # constant neuron (w = 0 up to rounding): no hyperplane
        u = w / nw
        p0 = -bi / nw * u  # the hyperplane's point nearest the origin
        t = np.array([-u[1], u[0]])
        line = p0[None, :] + np.linspace(-3 * lim, 3 * lim, 2)[:, None] * t[None, :]
        ax.plot(line[:, 0], line[:, 1], "--", color="k", lw=0.8)
        colour = _arrow_colour(float(a[i] * np.hypot(nw, bi)), scale)
        ax.annotate("", xy=p0 + 0.5 * u, xytext=p0,
                    arrowprops=dict(arrowstyle="-|>", color="k", lw=0.6, fc=colour,
                                    mutation_scale=14))
        if labels is not None:
            ax.text(*(p0 + 0.62 * u), labels[i], fontsize=7, ha="center", va="center")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def hyperplane_panels(networks: Sequence[Any], titles: Sequence[str], *, ncols: int = 3,
                      labels: Sequence[Sequence[str] | None] | None = None,
                      half_width: float | None = None):
    """Several networks side by side, one hyperplane plot each (e.g. the steps of Fig. A.6).

    Parameters
    ----------
    networks : sequence of MLP
        2-D input, one hidden layer each.
    titles : sequence of str
        One per network.
    ncols : int, default=3
    labels : sequence of (sequence of str or None), optional
        Per network, the per-neuron texts of :func:`draw_hyperplanes`.
    half_width : float, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    if len(networks) != len(titles):
        raise InputError(f"need one title per network, got {len(networks)} networks and "
                         f"{len(titles)} titles")
    n = len(networks)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.2 * nrows), layout="constrained")
    for k, (net, title) in enumerate(zip(networks, titles)):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        draw_hyperplanes(ax, net, title=title, half_width=half_width,
                         labels=None if labels is None else labels[k])
    return fig
