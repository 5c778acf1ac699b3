"""The report's figures, drawn with matplotlib's object API (no pyplot: no global backend or figure
registry is touched) and returned as PNG bytes. Every method keeps one colour in every figure."""

from __future__ import annotations

import io
import itertools
from collections import Counter

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from medgrain.report.gather import Scores
from medgrain.report.results import Run

BASELINE_COLOURS = {"random": "#8C8C8C", "imagenet": "#937860"}
# The objectives take these in the registry's order (clip, mgll, mgca, mgca+mgll, then any added one);
# a method that is neither a baseline nor a registered objective takes the next one left.
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#DA8BC3", "#CCB974", "#64B5CD", "#2F4B7C",
           "#A05195")
# Columns of metrics.jsonl that are not loss parts.
NOT_LOSSES = {"split", "step", "epoch", "lr", "grad_norm", "logit_scale", "samples_per_s", "time", "records",
              "message", "skipped_steps", "skipped_records"}
DPI = 100


def method_colours(names: list[str]) -> dict[str, str]:
    """One colour per method, the same in every figure and every report."""
    from medgrain.losses.objective import OBJECTIVES

    objectives = OBJECTIVES.names()
    known = {**BASELINE_COLOURS, **{name: PALETTE[i % len(PALETTE)] for i, name in enumerate(objectives)}}
    spare = itertools.cycle(PALETTE[len(objectives):] or PALETTE)
    colours = {}
    for name in names:
        base = name.split(" ")[0]
        colours[name] = known.get(base) or next(spare)
    return colours


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e6e6e6", linewidth=0.7)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)


def _grid(n: int, columns: int, width: float, height: float) -> tuple[Figure, list]:
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = Figure(figsize=(width * columns, height * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).flat
    for ax in list(axes)[n:]:
        ax.axis("off")
    return fig, list(fig.axes)[:n]


# ------------------------------------------------------------------------------------ loss curves


def loss_parts(runs: list[Run]) -> list[str]:
    """The loss and its parts logged by these runs, total loss first."""
    parts = dict.fromkeys(k for run in runs for row in run.history if row.get("split") in ("train", "valid")
                          for k, v in row.items() if k not in NOT_LOSSES and isinstance(v, (int, float)))
    return sorted(parts, key=lambda k: (k != "loss", list(parts).index(k)))


def loss_curves_figure(method: str, runs: list[Run], colour: str) -> Figure:
    """One panel per loss part: training (line) and validation (dashed, dots) against the step;
    one line per run when the method has several seeds."""
    parts = loss_parts(runs)
    fig, axes = _grid(len(parts), 4, 3.0, 2.4)
    styles = ("-", "-.", ":", (0, (5, 1)))
    for ax, part in zip(axes, parts):
        for k, run in enumerate(runs):
            seed = f" seed {run.seed}" if len(runs) > 1 else ""
            for split, style in (("train", {"linestyle": styles[k % 4], "linewidth": 1.4}),
                                 ("valid", {"linestyle": "--", "marker": "o", "markersize": 3.5, "linewidth": 1.2})):
                rows = [r for r in run.history if r.get("split") == split and isinstance(r.get(part), (int, float))]
                if rows:
                    ax.plot([r["step"] for r in rows], [r[part] for r in rows], color=colour,
                            alpha=1.0 if split == "train" else 0.75, label=f"{split}{seed}", **style)
        ax.set_title(part, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.set_ylabel(part, fontsize=9)
        _style(ax)
    if axes:
        axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle(f"{method}: training and validation loss", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------ ROC


def drawable_findings(scores: dict[str, Scores]) -> tuple[list[str], list[str]]:
    """Findings with both positives and negatives in the test split (an ROC curve needs both), and the rest."""
    first = next(iter(scores.values()))
    both = [n for c, n in enumerate(first.names) if 0 < first.labels[:, c].sum() < len(first.labels)]
    return both, [n for n in first.names if n not in both]


def roc_figure(task: str, scores: dict[str, Scores], colours: dict[str, str]) -> Figure:
    """One panel per finding that has both classes, one curve per method with its AUROC; the diagonal
    is chance."""
    names, _ = drawable_findings(scores)
    if not names:
        raise ValueError("no finding has both positives and negatives in the test split")
    fig, axes = _grid(len(names), 4, 2.8, 2.7)
    for ax, name in zip(axes, names):
        for method, s in scores.items():
            c = s.names.index(name)
            labels, values = s.labels[:, c], s.scores[:, c]
            fpr, tpr, _ = roc_curve(labels, values)
            ax.plot(fpr, tpr, color=colours[method], linewidth=1.5,
                    label=f"{method} {roc_auc_score(labels, values):.2f}")
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1, label="chance 0.50")
        reference = next(iter(scores.values()))
        positives = int(reference.labels[:, reference.names.index(name)].sum())
        ax.set_title(f"{name} ({positives} positive)", fontsize=9.5)
        ax.set_xlabel("false positive rate", fontsize=8.5)
        ax.set_ylabel("true positive rate", fontsize=8.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_aspect("equal")
        _style(ax)
        ax.legend(fontsize=7, frameon=False, loc="lower right", title="AUROC", title_fontsize=7)
    fig.suptitle(f"{task}: ROC per finding", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------ embeddings


def category_colours(categories: list[str]) -> dict[str, str]:
    order = [c for c, _ in Counter(categories).most_common() if c not in ("normal", "several findings")]
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
               "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
    colours = {c: palette[i % len(palette)] for i, c in enumerate(order)}
    colours["normal"] = "#c7c7c7"
    colours["several findings"] = "#222222"
    return colours


def embedding_figure(points: dict[str, tuple[np.ndarray, list[str]]]) -> Figure:
    """A t-SNE panel per method, points coloured by finding (shared legend)."""
    all_categories = [c for _, cats in points.values() for c in cats]
    colours = category_colours(all_categories)
    fig, axes = _grid(len(points), 3, 3.6, 3.4)
    for ax, (method, (xy, categories)) in zip(axes, points.items()):
        categories = np.asarray(categories)
        for category, colour in colours.items():
            at = categories == category
            if at.any():
                hollow = category == "several findings"
                ax.scatter(xy[at, 0], xy[at, 1], s=16, label=category, linewidths=0.9,
                           facecolors="none" if hollow else colour, edgecolors=colour)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("t-SNE 1", fontsize=8.5)
        ax.set_ylabel("t-SNE 2", fontsize=8.5)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#cccccc")
    present = [c for c in colours if c in set(all_categories)]
    handles = {h.get_label(): h for ax in axes for h in ax.collections}
    fig.legend([handles[c] for c in present if c in handles], [c for c in present if c in handles],
               loc="outside right center", fontsize=8, frameon=False, title="finding", title_fontsize=8.5)
    fig.suptitle("image embeddings of the validation and test images (t-SNE)", fontsize=11)
    return fig


# ------------------------------------------------------------------------------------ grounding

GROUNDING_DISPLAY = 128  # pixels of each panel's square: the eval transform's centre square, resized


def grounding_panel_data(manifest, example: dict, size: int = GROUNDING_DISPLAY):
    """The image as the model saw it (shorter side resized, centre square), the example's region on the
    same grid and its stored patch-grid map brought to that size (nearest: each patch covers its pixels)."""
    from torchvision.transforms.v2 import functional as TF

    from medgrain.evaluation.grounding import GroundingDataset, GroundingPair

    pair = GroundingPair(example["record_id"], example["finding"], example["phrase"],
                         tuple(tuple(b) for b in example["boxes"]), tuple(example["masks"]))
    image, region = GroundingDataset(manifest, [pair], lambda raw: TF.center_crop(TF.resize(raw, [size]),
                                                                                  [size, size]), size)[0]
    image = image.float().numpy()
    image = image / 255.0 if image.max() > 1 else image
    image = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    grid = np.asarray(example["map"], dtype=np.float64)
    rows = np.minimum(np.arange(size) * grid.shape[0] // size, grid.shape[0] - 1)
    cols = np.minimum(np.arange(size) * grid.shape[1] // size, grid.shape[1] - 1)
    return image, region.numpy(), grid[np.ix_(rows, cols)]


def grounding_figure(manifest, examples: dict[str, list[dict]]) -> Figure:
    """One row per (image, phrase), one column per method: the phrase's similarity map over the image
    with the ground-truth region outlined, titled with the pair's CNR and mIoU."""
    methods = list(examples)
    n = min(len(v) for v in examples.values())
    fig = Figure(figsize=(2.6 * len(methods), 2.7 * n + 0.3), layout="constrained")
    axes = fig.subplots(n, len(methods), squeeze=False)
    for j, method in enumerate(methods):
        for i, example in enumerate(examples[method][:n]):
            ax = axes[i, j]
            image, region, similarity = grounding_panel_data(manifest, example)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            ax.imshow(similarity, cmap="inferno", alpha=0.5, vmin=-1, vmax=1)
            ax.contour(region.astype(float), levels=[0.5], colors="#00e5ff", linewidths=1.2)
            cnr = "–" if example["cnr"] is None else f"{example['cnr']:.2f}"
            miou = "–" if example["miou"] is None else f"{example['miou']:.2f}"
            ax.set_title(f"{method}\nCNR {cnr} · mIoU {miou}", fontsize=8)
            ax.set_xlabel(example["phrase"][:40] + ("…" if len(example["phrase"]) > 40 else ""), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig
