"""Regenerate the cpu-paper tables from results/cpu-paper/selection_summary.csv (run after the study).

    .venv/bin/python scripts/readme_tables.py

The full table in docs/results.md starts at the line ``| method | tier | top-1 (95 % CI) ...``, the README's headline
table at ``| method | tier | top-1 | mean regret ...``; each ends at the first blank line and is replaced in place,
so that every number in them is one the study produced.
"""

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("| method | tier | top-1 (95 % CI) | top-3 | mean regret (95 % CI) | against M&C: top-1 / regret difference "
          "(95 % CI), wins–losses | seconds per new dataset |")
NAMES = {"M&C": "**M&C**",
         "M&C + probe": "M&C + probe (its learners stacked with the probe and the gain model)",
         "metadata-only": "metadata-only (the booster on model and dataset features alone)",
         "random": "random (exact expectation)",
         "probe": "probe (rank the candidates by their pretrained samples' FID)",
         "probe + gain": "probe + gain (pretrained FID corrected by the gain on similar datasets)",
         "cheap probe": "cheap probe (the probe with 16 samples per candidate)",
         "successive halving": "successive halving (10 × 25 steps, the better 5 to 100 steps)",
         "probe-first halving": "probe-first halving (probe all 10, the better 5 fine-tuned)",
         "exhaustive fine-tuning": "exhaustive fine-tuning (the label itself)"}


def name(method: str) -> str:
    if method in NAMES:
        return NAMES[method]
    return method.replace("-first halving", "-first halving (its top 5 fine-tuned)")


def table(summary: pd.DataFrame) -> list[str]:
    lines = [HEADER, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary.itertuples():
        exact = r.method == "exhaustive fine-tuning"
        top1 = f"{r.top1:.3f}" + ("" if exact else f" ({r.top1_ci_low:.2f}–{r.top1_ci_high:.2f})")
        regret = f"{r.mean_regret:.3f}" + ("" if exact else f" ({r.mean_regret_ci_low:.2f}–{r.mean_regret_ci_high:.2f})")
        versus = "–" if r.method == "M&C" else (
            f"{r.top1_diff:+.3f} / {r.regret_diff:+.3f} ({r.regret_diff_ci_low:+.2f} to {r.regret_diff_ci_high:+.2f}), "
            f"{int(r.wins)}–{int(r.losses)}: {r.verdict}")
        seconds = f"{r.seconds_per_dataset:.1f}" if r.seconds_per_dataset < 10 else f"{r.seconds_per_dataset:.0f}"
        top3 = "–" if pd.isna(r.top3) else f"{r.top3:.3f}"
        lines.append(f"| {name(r.method)} | {r.tier} | {top1} | {top3} | {regret} | {versus} | {seconds} |")
    return lines


HEADLINE_HEADER = "| method | tier | top-1 | mean regret | against M&C: verdict (its wins–losses) | seconds per new dataset |"
HEADLINE = ["M&C", "nearest-dataset", "history-weighted", "global-best", "TransferGraph (XGBoost, node2vec+)", "probe",
            "M&C + cheap probe", "M&C-first halving", "exhaustive fine-tuning"]


def headline(summary: pd.DataFrame) -> list[str]:
    lines = [HEADLINE_HEADER, "| --- | --- | --- | --- | --- | --- |"]
    rows = summary.set_index("method")
    for method in HEADLINE:
        r = rows.loc[method]
        versus = "–" if method == "M&C" else f"{r.verdict} ({int(r.wins)}–{int(r.losses)})"
        seconds = f"{r.seconds_per_dataset:.1f}" if r.seconds_per_dataset < 10 else f"{r.seconds_per_dataset:.0f}"
        lines.append(f"| {'**M&C**' if method == 'M&C' else method} | {r.tier} | {r.top1:.3f} | {r.mean_regret:.3f} | "
                     f"{versus} | {seconds} |")
    return lines


def replace(path: Path, header: str, lines_: list[str]) -> None:
    lines = path.read_text().split("\n")
    start = lines.index(header)
    end = start
    while lines[end].strip():
        end += 1
    lines[start:end] = lines_
    path.write_text("\n".join(lines))


def main() -> None:
    summary = pd.read_csv(ROOT / "results" / "cpu-paper" / "selection_summary.csv")
    replace(ROOT / "docs" / "results.md", HEADER, table(summary))
    replace(ROOT / "README.md", HEADLINE_HEADER, headline(summary))


if __name__ == "__main__":
    main()
