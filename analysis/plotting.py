"""Matplotlib settings and colours shared by the analysis figures (non-interactive Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

plt.rcParams.update({
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
})


def category_colours(labels) -> dict:
    """Map each distinct label, in sorted order, to a colour (tab10, or tab20 above 10 labels)."""
    distinct = sorted(set(labels), key=str)
    palette = plt.get_cmap("tab10" if len(distinct) <= 10 else "tab20")
    return {label: palette(index % palette.N) for index, label in enumerate(distinct)}


def scatter_by(axis, points: np.ndarray, labels, *, sizes=None, title: str | None = None, legend_title: str | None = None):
    """Scatter 2-D points coloured by label, with a legend entry per label."""
    colours = category_colours(labels)
    labels = np.asarray(labels)
    for label, colour in colours.items():
        mask = labels == label
        size = None if sizes is None else np.asarray(sizes)[mask]
        axis.scatter(points[mask, 0], points[mask, 1], s=size if size is not None else 25,
                     color=colour, label=f"{label} ({int(mask.sum())})", edgecolor="black", linewidth=0.3)
    if title:
        axis.set_title(title)
    axis.legend(title=legend_title, loc="best", fontsize=7, title_fontsize=7)
    return colours


def caption(figure, text: str, y: float = -0.02) -> None:
    """Add a caption below the axes at figure height fraction `y`: what the plot shows, its sizes and seeds."""
    figure.text(0.01, y, text, ha="left", va="top", fontsize=7, wrap=True)


def close(figure) -> None:
    plt.close(figure)
