"""Report: the study's figures and its cost table (used by notebooks 04-06 and ``report.html``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import load_manifests
from ..paths import resolve
from ..evaluate import DIRECTIONS
from ..images import labelled_rows, save_png, thumbnails
from ..train.generate import read_samples
from ..world.data import load_dataset_split
from .tables import cell_dir


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


def draw_matching_graph(graph, ax=None, families: dict | None = None):
    """The matching graph laid out so that a reader sees which models serve which datasets: pretraining datasets
    on the left, models in the middle, the fine-tuning datasets on the right grouped by family (``families``:
    dataset id -> family; default: the id's first word). A model–dataset edge is drawn for every pair above the
    graph's quality threshold, its width the normalised quality after fine-tuning and its colour the model's;
    pretraining edges are dashed. Dataset–dataset similarity edges are left out (notebook 01 shows them)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    nodes = dict(graph.nodes(data=True))
    edges = list(graph.edges(data=True))
    models = sorted(n for n, d in nodes.items() if d.get("kind") == "model")
    pretrain = {v if nodes[v].get("kind") == "dataset" else u for u, v, d in edges if d.get("kind") == "pretrain"}
    performed = {v if nodes[v].get("kind") == "dataset" else u for u, v, d in edges if d.get("kind") == "performance"}
    targets = [n for n, d in nodes.items() if d.get("kind") == "dataset" and n not in pretrain
               and (n in performed or any(True for _ in graph.neighbors(n)))]
    family = (lambda n: families.get(nodes[n]["id"], "other")) if families else (
        lambda n: nodes[n]["id"].split("-")[0] if "-" in nodes[n]["id"] else nodes[n]["id"].split("_")[0])
    targets = sorted(targets, key=lambda n: (family(n), nodes[n]["id"]))
    # y positions: targets with a gap between families, models and sources spread over the same height
    y, pos, last = 0.0, {}, None
    for n in targets:
        if last is not None and family(n) != last:
            y += 1.0
        pos[n], last, y = (1.0, -y), family(n), y + 1
    height = max(y - 1, 1)
    for column, x in ((models, 0.0), (sorted(pretrain, key=lambda n: nodes[n]["id"]), -1.0)):
        for k, n in enumerate(column):
            pos[n] = (x, -height * (k + 0.5) / max(len(column), 1))
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.22 * len(pos) + 2))
    colours = plt.cm.tab10(np.linspace(0, 1, 10))[np.arange(len(models)) % 10]
    colour = {m: colours[k] for k, m in enumerate(models)}
    for u, v, d in edges:
        if u not in pos or v not in pos:
            continue
        m = u if nodes[u].get("kind") == "model" else v
        (x0, y0), (x1, y1) = pos[u], pos[v]
        if d.get("kind") == "performance":  # the best model of a dataset (weight 1) stands out
            strength = max(d["weight"] - 0.5, 0.0) / 0.5
            ax.plot([x0, x1], [y0, y1], color=colour[m], lw=0.3 + 2.7 * strength, alpha=0.1 + 0.85 * strength ** 3)
        elif d.get("kind") == "pretrain":
            ax.plot([x0, x1], [y0, y1], color="0.55", lw=0.8, ls="--", alpha=0.8)
    for n, (x, yy) in pos.items():
        kind = nodes[n].get("kind")
        if kind == "model":
            ax.scatter([x], [yy], s=70, marker="s", color=colour[n], zorder=3)
            ax.text(x, yy + 0.45, nodes[n]["id"], ha="center", va="bottom", fontsize=7, zorder=4)
        else:
            ax.scatter([x], [yy], s=22, color="tab:green" if x > 0 else "0.4", zorder=3)
            ax.text(x + (0.03 if x > 0 else -0.03), yy, nodes[n]["id"], ha="left" if x > 0 else "right",
                    va="center", fontsize=7)
    for fam in dict.fromkeys(family(n) for n in targets):
        first = next(n for n in targets if family(n) == fam)
        ax.text(1.55, pos[first][1], fam, fontsize=8, fontweight="bold", va="center")
    ax.set_xlim(-1.6, 1.8)
    ax.set_axis_off()
    ax.legend(handles=[Line2D([], [], color="0.3", lw=3, label="fine-tuned quality (width and opacity: normalised, "
                                                                  "> 0.5; the widest: the dataset's best model)"),
                       Line2D([], [], color="0.55", lw=1, ls="--", label="pretrained on")],
              loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8, frameon=False)
    ax.set_title("matching graph: pretraining data (left), models (middle), datasets by family (right)", fontsize=9)
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


def paired_plot(summary, axes=None, reference: str = "M&C"):
    """Every method against ``reference``, paired by dataset: the mean difference in top-1 (left; right of 0 = finds
    the best model more often) and in regret (right; left of 0 = loses less), with 95 % bootstrap intervals; a
    grey point is not distinguishable from the reference (its interval holds 0)."""
    import matplotlib.pyplot as plt

    table = summary.dropna(subset=["top1_diff"]).reset_index(drop=True)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 0.32 * len(table) + 1.6), sharey=True)
    y = np.arange(len(table))
    colours = table["verdict"].map({"better": "tab:green", "worse": "tab:red"}).fillna("0.55")
    for ax, col, title in ((axes[0], "top1_diff", "top-1 minus M&C's"), (axes[1], "regret_diff", "regret minus M&C's")):
        lo = (table[col] - table[f"{col}_ci_low"]).to_numpy()
        hi = (table[f"{col}_ci_high"] - table[col]).to_numpy()
        ax.errorbar(table[col], y, xerr=[lo, hi], fmt="none", ecolor="0.7", capsize=2)
        ax.scatter(table[col], y, c=colours, zorder=2)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(title.replace("M&C", reference), fontsize=9)
    for yi, (_, row) in zip(y, table.iterrows()):
        axes[1].annotate(f"{row['wins']:.0f}-{row['losses']:.0f}", (1.0, yi), xycoords=("axes fraction", "data"),
                         xytext=(4, -3), textcoords="offset points", fontsize=7)
    axes[0].set_yticks(y, table["method"])
    axes[0].invert_yaxis()
    axes[1].set_xlabel("paired by dataset, 95 % bootstrap CI; green / red: better / worse than M&C; wins-losses")
    return axes


def headline(summary, ceiling=None, reference: str = "M&C") -> list[str]:
    """The report's verdict in a few sentences, every number read from ``selection_summary.csv`` (and the label's
    ``ceiling`` table when there is one): the reference's top-1 and regret, then every method that is
    distinguishable from it (paired by dataset) and every one that is not, with what each costs."""
    table = summary.set_index("method")
    mc = table.loc[reference]
    n = int(mc["n_datasets"])
    lines = [f"{reference} ranks the best model first for {round(mc['top1'] * n)} of {n} held-out datasets (top-1 "
             f"{mc['top1']:.3f}, 95 % CI {mc['top1_ci_low']:.2f}-{mc['top1_ci_high']:.2f}; the paper: 0.613 on its own "
             f"grid), mean regret {mc['mean_regret']:.3f}, at {mc['seconds_per_dataset']:.1f} s per new dataset."]
    if pd.notna(mc.get("shortlist_coverage")):
        lines.append(f"Its {mc['shortlist_level']:.0%} conformal shortlist held the best model for "
                     f"{mc['shortlist_coverage']:.3f} of the datasets with {mc['shortlist_size']:.1f} models on "
                     "average.")
    if "verdict" in table:
        for verdict, words in (("better", "ahead of"), ("worse", "behind")):
            rows = table[table["verdict"] == verdict]
            if len(rows):
                lines.append(f"Distinguishably {words} {reference} (paired by dataset, 95 % CI excludes 0): "
                             + "; ".join(
                    f"{m} (top-1 {r['top1']:.3f}, regret {r['mean_regret']:.3f}, {r['wins']:.0f} wins / "
                    f"{r['losses']:.0f} losses, {r['seconds_per_dataset']:.1f} s)" for m, r in rows.iterrows()))
        same = table[table["verdict"] == "not distinguishable"]
        if len(same):
            lines.append(f"Not distinguishable from {reference} on these datasets: {', '.join(same.index)}.")
    if ceiling is not None:
        lines.append(f"A second seed reproduces the winner for {ceiling.same_winner.mean():.3f} of the rerun datasets: "
                     "the top-1 any selector can be expected to reach on this label.")
    return lines


TIER_COLOURS = {"free": "tab:gray", "profile only": "tab:blue", "cheap probe": "gold", "full probe": "tab:orange",
                "fine-tune some": "tab:green", "fine-tune all": "darkgreen"}


def method_tier(label: str) -> str:
    """What a method costs a new dataset, from the method registry (:attr:`mc_bench.select.methods.Method.tier`):
    the frontier's colours."""
    from ..select.methods import method

    return method(label).tier


def frontier_plot(summary, axes=None):
    """The cost–accuracy frontier: every method's compute per new dataset (``seconds_per_dataset``, log scale)
    against its top-1 (left) and mean regret (right), with bootstrap intervals; methods on the frontier (no other
    method is both cheaper and better) are joined by a line. Points are numbered, cheapest first, and coloured by
    what it costs a new dataset (:func:`method_tier`: profile only, cheap probe, full probe, fine-tune some or all);
    the key under the axes names them."""
    import matplotlib.pyplot as plt

    table = summary.dropna(subset=["seconds_per_dataset"]).copy()
    table = table[table["seconds_per_dataset"] > 0].sort_values("seconds_per_dataset", kind="stable")
    table["number"] = np.arange(1, len(table) + 1)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2 + 0.16 * ((len(table) + 1) // 2)))
    for ax, col, better in ((axes[0], "top1", "higher"), (axes[1], "mean_regret", "lower")):
        x, y = table["seconds_per_dataset"].to_numpy(), table[col].to_numpy()
        if f"{col}_ci_low" in table:
            lo = (table[col] - table[f"{col}_ci_low"]).fillna(0).to_numpy()
            hi = (table[f"{col}_ci_high"] - table[col]).fillna(0).to_numpy()
            ax.errorbar(x, y, yerr=[lo, hi], fmt="none", ecolor="0.75", capsize=2, zorder=1)
        ax.scatter(x, y, c=[TIER_COLOURS[method_tier(m)] for m in table["method"]], zorder=2)
        for xi, yi, number in zip(x, y, table["number"]):
            ax.annotate(str(number), (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=8)
        front, best = [], -np.inf
        for xi, yi in zip(x, y):  # cheapest first: a method is on the frontier when it beats every cheaper one
            value = yi if better == "higher" else -yi
            if value > best + 1e-12:
                front.append((xi, yi))
                best = value
        ax.plot(*zip(*front), color="tab:red", linewidth=1, zorder=0, label="frontier")
        for tier in dict.fromkeys(method_tier(m) for m in table["method"]):
            ax.scatter([], [], color=TIER_COLOURS[tier], label=tier)
        ax.set_xscale("log")
        ax.set_xlabel("compute per new dataset (seconds, CPU; log scale)")
        ax.set_ylabel(f"{col} ({better} is better)")
        ax.legend(fontsize=7)
    key = [f"{n}  {m}" for n, m in zip(table["number"], table["method"])]
    half = (len(key) + 1) // 2
    for ax, lines in zip(axes, (key[:half], key[half:])):
        ax.text(0.0, -0.2, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=7.5)
    return axes


def gains_plot(gains, label: str = "fid", ax=None):
    """Each cell's label before (pretrained) and after fine-tuning; points below the diagonal improved (lower is
    better) — in-domain cells (the model was pretrained on the dataset's family) in colour."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 5))
    for in_domain, colour, name in ((False, "0.6", "out of domain"), (True, "tab:blue", "in domain")):
        g = gains[gains["in_domain"] == in_domain]
        ax.scatter(g[f"{label}_pretrained"], g[f"{label}_finetuned"], s=10, color=colour, label=name, alpha=0.8)
    lim = [0, float(np.nanmax(gains[[f"{label}_pretrained", f"{label}_finetuned"]].to_numpy())) * 1.05]
    ax.plot(lim, lim, color="k", linewidth=0.8)
    ax.set_xlabel(f"{label} of the pretrained model")
    ax.set_ylabel(f"{label} after fine-tuning")
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


# ------------------------------------------------------------------------------------------------ contact sheets


def write_contact_sheets(study_dir, n_images: int = 6, manifests=None) -> list:
    """One PNG per dataset of the study (``contact_sheets/<dataset>.png``): a row of held-out real images, then a
    row of samples per model, labelled with the model and its label value, best first. Made from the per-cell
    folders (``runs/``), so it is written when the grid has run; the committed sheets stay when they are gone."""
    study_dir = Path(study_dir)
    record = json.loads((study_dir / "study.json").read_text())
    label = record["profile"]["evaluate"]["quality"]
    recorded = record.get("manifests")
    m = load_manifests(manifests if manifests is not None else resolve(recorded) if recorded else None)
    performance = pd.read_csv(study_dir / "performance.csv")
    written = []
    for dataset, group in performance.groupby("dataset", sort=False):
        group = group.sort_values(label, ascending=DIRECTIONS[label] == "lower")
        real, _ = load_dataset_split(m, dataset, "eval")
        rows = []
        for _, r in group.iterrows():
            folder = cell_dir(study_dir, r["model"], dataset)
            if not (folder / "samples.csv").is_file():
                continue
            fake, _ = read_samples(folder)
            rows.append((f"{r['model']}  {label} {r[label]:.1f}", fake[:n_images]))
        if not rows:
            continue
        size = rows[0][1].shape[1]
        real = thumbnails(real[:n_images], size)
        path = study_dir / "contact_sheets" / f"{dataset}.png"
        save_png(labelled_rows([(f"{dataset}: real (held-out)", real)] + rows, scale=2, label_width=230), path)
        written.append(path)
    return written
