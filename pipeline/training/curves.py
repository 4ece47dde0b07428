"""Training curves: per-step metrics drawn as small panels.

One drawing serves every place that shows them: the `ppo_policy` artifact (`training_curves.png`,
every curve of `ppo_train_metrics.jsonl` against episodes), the evaluation report (reward, KL and
length against the PPO step) and the `sft_checkpoint` artifact (training and held-out loss). matplotlib's Agg canvas is used directly: no display, no global pyplot state, safe in a
Dagster worker. No torch here, so the report can import it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Panel = tuple[str, tuple[str, ...]]  # (title, metric keys drawn in it)

# Every curve PPO logs, one panel each (the ppo_policy artifact).
PPO_PANELS: tuple[Panel, ...] = (
    ("RM score", ("rm_score",)),
    ("KL to SFT (per sequence)", ("kl",)),
    ("total reward", ("total_reward",)),
    ("entropy (per token)", ("entropy",)),
    ("response length (tokens)", ("response_length",)),
    ("value loss", ("value_loss",)),
    ("clip fraction", ("clip_fraction",)),
    ("explained variance", ("explained_variance",)),
    ("beta (KL coefficient)", ("beta",)),
)
# SFT's training loss and held-out loss, one panel (rows carry one of the two keys each).
SFT_PANELS: tuple[Panel, ...] = (("SFT loss (answer tokens)", ("loss", "held_out_loss")),)
# What the evaluation report shows next to its comparison.
REPORT_PANELS: tuple[Panel, ...] = (
    ("reward", ("rm_score", "total_reward")),
    ("KL to reference", ("kl",)),
    ("response length (tokens)", ("response_length",)),
)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_training_curves(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    panels: Sequence[Panel] = PPO_PANELS,
    x_key: str = "episodes",
    columns: int = 3,
    x_label: str | None = None,
) -> bool:
    """Draw each panel's metrics per logged step into a PNG at `path`; False (and no file) when nothing numeric was logged.

    The x value of a row is its `x_key` (its index in `rows` when absent).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not any(_number(row.get(key)) for row in rows for _, keys in panels for key in keys):
        return False
    n_rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4 * columns, 3.4 * n_rows), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(n_rows, columns, squeeze=False).flat
    for (title, keys), axis in zip(panels, axes):  # panels first: zip must not take an axis it will not use
        for key in keys:
            points = [(row.get(x_key, index), row[key]) for index, row in enumerate(rows) if _number(row.get(key))]
            if points:
                axis.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        axis.set_title(title)
        axis.set_xlabel(x_label or x_key)
        axis.grid(alpha=0.3)
        if len(keys) > 1:
            axis.legend(fontsize=8)
    for axis in list(axes):  # panels left over in the last row of the grid
        axis.set_visible(False)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return True
