"""Plotting: a group's curve over rounds (or time, or bytes sent), and the curves of a Summary as an image.

matplotlib loads only inside `plot_curves`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedsim.compare.groups import Group
from fedsim.compare.summary import Summary, _group_status
from fedsim.errors import FedsimError

X_AXES = {"round": "round", "time": "elapsed time (s)", "sim_seconds": "simulated time (s)",
          "bytes": "bytes sent, up and down (cumulative)", "bytes-up": "bytes sent by the clients (cumulative)"}
COLUMN = {"time": "elapsed_seconds", "sim_seconds": "sim_seconds", "bytes": "bytes", "bytes-up": "bytes_up"}


def curve(group: Group, metric: str, x: str = "round") -> pd.DataFrame:
    """Per round: mean and sample std of `metric` over the group's seeds, their count, and x (the round, or the
    mean at that round of elapsed_seconds for x="time", of the simulated clock's sim_seconds for x="sim_seconds",
    runs without that column left out; of the bytes sent both ways up to that round for x="bytes", of those the
    clients sent for x="bytes-up": how compression papers compare)."""
    column = COLUMN.get(x, "elapsed_seconds")
    frames = [r.rows[["round", "elapsed_seconds", metric] + (["sim_seconds"] if "sim_seconds" in r.rows else [])]
              .assign(bytes=(r.rows["bytes_up"] + r.rows["bytes_down"]).cumsum(), bytes_up=r.rows["bytes_up"].cumsum())
              for r in group.runs if metric in r.rows and (x != "sim_seconds" or "sim_seconds" in r.rows)]
    data = pd.concat(frames).dropna(subset=[metric]) if frames else pd.DataFrame(
        columns=["round", "elapsed_seconds", "sim_seconds", metric, "bytes", "bytes_up"], dtype=float)
    stats = data.groupby("round").agg(mean=(metric, "mean"), std=(metric, "std"), count=(metric, "size"),
                                      time=(column, "mean")).reset_index()
    stats["x"] = stats["round"] if x == "round" else stats["time"]
    return stats


def check_plot_path(path: str | Path) -> Path:
    """`path` as a Path, if a plot can be written there: its folder exists and matplotlib writes its extension's
    format (no extension: PNG); else one FedsimError line. A sweep checks this before it trains."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if not path.parent.is_dir():
        raise FedsimError(f"cannot write {path}: directory {path.parent} does not exist")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix and path.suffix[1:].lower() not in formats:
        raise FedsimError(f"cannot write {path}: {path.suffix} is not an image format matplotlib writes; use one of "
                          f"{', '.join('.' + f for f in sorted(formats))}")
    return path


def plot_curves(summary: Summary, path: str | Path, x: str = "round") -> Path:
    """Write `metric` vs round (or elapsed time) per group to an image: the mean over seeds as a
    line (dotted where not every seed has the round), ± sample std as a band (where at least two
    seeds have the round), the target as a dashed line."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in X_AXES:
        raise FedsimError(f"--x must be one of {', '.join(X_AXES)}, not {x!r}")
    if x == "sim_seconds" and not summary.has_sim:
        raise FedsimError("--x sim_seconds: no run has the simulated clock's sim_seconds (train with client profiles: "
                          "--speed, --bandwidth or --profiles)")
    path = check_plot_path(path)
    labels = [f"{g.name} (n={g.n})" for g in summary.groups]
    below = max(map(len, labels), default=0) > 60  # long labels go under the plot, where they cannot hide a curve
    fig = Figure(figsize=(9, 5.5 + (0.2 * (len(labels) + 1) if below else 0)), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["tab10" if len(summary.groups) <= 10 else "tab20"]
    for i, (g, rs) in enumerate(zip(summary.groups, summary.runs, strict=True)):
        stats = curve(g, summary.metric, x)
        if stats.empty:
            continue
        color = cmap(i % cmap.N)
        status = _group_status(rs)
        label = f"{g.name} (n={g.n})" + ("" if status == "finished" else f" [{status}]")
        marker = "o" if len(stats) <= 30 else None
        # Where some seeds have no row (stopped early, still running) the mean is over fewer seeds:
        # drawn dotted so a jump there is not read as a change in the method.
        full = stats["mean"].where(stats["count"] >= g.n)
        if full.isna().any():
            ax.plot(stats["x"], stats["mean"], color=color, lw=1.2, ls=":", marker=marker, ms=2)
        ax.plot(stats["x"], full, color=color, lw=1.8, label=label, marker=marker, ms=3)
        band = stats[stats["count"] >= 2]
        if len(band):
            ax.fill_between(band["x"], band["mean"] - band["std"], band["mean"] + band["std"],
                            color=color, alpha=0.2, lw=0)
    if summary.target is not None:
        ax.axhline(summary.target, color="0.3", ls="--", lw=1.2, label=f"target {summary.target:g}")
    direction = "lower" if summary.lower_is_better else "higher"
    ax.set_title(f"{summary.metric} vs {X_AXES[x].removesuffix(' (s)')}\n"
                 f"mean ± sample std over seeds; {direction} is better", fontsize="medium")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(summary.metric)
    ax.grid(True, alpha=0.3)
    if x == "round":
        ax.xaxis.get_major_locator().set_params(integer=True)
    if x.startswith("bytes"):  # codecs differ by orders of magnitude in what they send
        ax.set_xscale("log")
    if below:
        fig.legend(fontsize="small", loc="outside lower center")
    elif len(summary.groups) + (summary.target is not None) > 8:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small", loc="best")
    try:
        fig.savefig(path)
    except (ValueError, OSError) as e:
        raise FedsimError(f"cannot write {path}: {e}") from None
    return path
