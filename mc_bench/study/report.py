"""Report: the study's figures and its cost table (used by notebooks 04-06 and ``report.html``)."""

from __future__ import annotations

import numpy as np


# ------------------------------------------------------------------------------------------------ study figures


def performance_heatmap(history, ax=None):
    """The label of every (model, dataset) pair, min–max normalised per dataset (1 = best model): the matrix
    Match & Choose learns to predict a column of."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    norm = history.normalised()
    if ax is None:
        _, ax = plt.subplots(figsize=(0.32 * norm.shape[1] + 3, 0.35 * norm.shape[0] + 1.5))
    sns.heatmap(norm, ax=ax, cmap="viridis", vmin=0, vmax=1, cbar_kws={"label": f"{history.label} (1 = best)"})
    best = norm.fillna(-1).to_numpy().argmax(axis=0)  # a pair not run is never the best
    ax.scatter(np.arange(norm.shape[1]) + 0.5, best + 0.5, marker="*", color="red", s=40, label="best model")
    ax.set_xlabel("dataset")
    ax.set_ylabel("model")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.12), fontsize=8)
    return ax


def draw_matching_graph(graph, ax=None, seed: int = 0):
    """Model nodes (squares) and dataset nodes (circles); performance edges coloured by weight, pretraining
    edges dashed, similarity edges grey."""
    import matplotlib.pyplot as plt
    import networkx as nx

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 7))
    pos = nx.spring_layout(graph, weight="weight", seed=seed)
    models = [n for n, d in graph.nodes(data=True) if d.get("kind") == "model"]
    datasets = [n for n, d in graph.nodes(data=True) if d.get("kind") == "dataset"]
    by_kind = {k: [(a, b) for a, b, d in graph.edges(data=True) if d.get("kind") == k]
               for k in ("performance", "pretrain", "similarity")}
    nx.draw_networkx_edges(graph, pos, edgelist=by_kind["similarity"], ax=ax, edge_color="0.8", width=0.6)
    nx.draw_networkx_edges(graph, pos, edgelist=by_kind["pretrain"], ax=ax, style="dashed", edge_color="tab:orange")
    weights = [graph.edges[e]["weight"] for e in by_kind["performance"]]
    nx.draw_networkx_edges(graph, pos, edgelist=by_kind["performance"], ax=ax, edge_color=weights,
                           edge_cmap=plt.cm.Blues, edge_vmin=0, edge_vmax=1, width=1.2)
    nx.draw_networkx_nodes(graph, pos, nodelist=datasets, ax=ax, node_color="tab:green", node_size=60)
    nx.draw_networkx_nodes(graph, pos, nodelist=models, ax=ax, node_color="tab:purple", node_shape="s", node_size=120)
    nx.draw_networkx_labels(graph, pos, labels={n: graph.nodes[n]["id"] for n in models}, ax=ax, font_size=7)
    ax.set_axis_off()
    ax.set_title("matching graph: models (squares), datasets (circles); blue = quality after fine-tuning, "
                 "orange dashed = pretraining, grey = similarity", fontsize=8)
    return ax


def topk_plot(summary, ax=None, ceiling: float | None = None):
    """Top-1 and top-3 accuracy per method with their bootstrap confidence intervals; ``ceiling`` (the share of
    datasets whose winner a second seed reproduces) is drawn as the line a method's top-1 is read against."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(summary) + 1.5))
    y = np.arange(len(summary))
    for offset, col, colour in ((-0.2, "top1", "tab:blue"), (0.2, "top3", "tab:orange")):
        lo = summary[col] - summary[f"{col}_ci_low"]
        hi = summary[f"{col}_ci_high"] - summary[col]
        ax.barh(y + offset, summary[col], height=0.4, xerr=[lo, hi], color=colour, label=col, capsize=2)
    if ceiling is not None:
        ax.axvline(ceiling, color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"label ceiling: seed-to-seed top-1 agreement {ceiling:.2f}")
    ax.set_yticks(y, summary["method"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of held-out datasets (95 % bootstrap CI)")
    ax.legend(fontsize=8)
    return ax


def regret_plot(lodo, ax=None):
    """Distribution over held-out datasets of the regret of each method's first pick."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * lodo["method"].nunique() + 1.5))
    sns.boxplot(data=lodo, x="regret", y="method", ax=ax, color="0.85", fliersize=0)
    sns.stripplot(data=lodo, x="regret", y="method", ax=ax, size=3, color="tab:blue", alpha=0.7)
    ax.set_xlabel("regret of the first pick (label units; 0 = the best model)")
    return ax


def cost_table(cells, lodo, profile_seconds_per_dataset: float):
    """Seconds per stage over the grid, and the cost of a new dataset: fine-tuning and evaluating every candidate
    against Match & Choose (profile the dataset, fit the ranker on the history, rank)."""
    import pandas as pd

    done = cells[cells["status"] == "done"]
    stages = ["train", "sample", "evaluate", "kernel_startup", "imports"]
    per_stage = pd.DataFrame({"stage": stages, "seconds_total": [float(done[s].sum()) for s in stages],
                              "seconds_per_cell": [float(done[s].mean()) for s in stages]})
    per_dataset = done.groupby("dataset")[["train", "sample", "evaluate"]].sum().sum(axis=1)
    mc = lodo[lodo["method"] == "M&C"]["seconds"].mean()
    new_dataset = pd.DataFrame([
        {"approach": "fine-tune and evaluate every candidate", "seconds": float(per_dataset.mean())},
        {"approach": "Match & Choose (profile + fit + rank)", "seconds": float(profile_seconds_per_dataset + mc)},
    ])
    return per_stage, new_dataset
