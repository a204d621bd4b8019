"""What choosing a model for one new dataset costs each method under the GPU `paper` profile, in device-hours.

    python benchmarks/paper_cost.py [--rates-from STUDY] [--out results/selection]

No GPU was used for this kit's committed results, so the paper profile's costs are **estimates**: its settings
(10 candidates, 1,000 LoRA steps at batch 8, 500 samples with 30 steps) times assumed rates for SD 1.5 at 512 px in
bf16 on one H100 (``ASSUMED_H100``; not measured). ``--rates-from results/<study>`` takes the rates a study
measured instead (``mc_bench.study.costs.measured_rates``) — a `paper` study run on a GPU turns the estimate
into a measurement.

The same formula is first checked where everything was measured: cpu-paper's rates (its own cells) give each
method's CPU seconds, printed beside the seconds cpu-paper's frontier measured (``selection_summary.csv``).

Writes ``paper_cost.csv`` (one row per method and setting: ``setting``, ``method``, ``seconds_per_dataset``,
``device_hours_per_dataset``, ``cost_basis``, the rates and their source; ``measured_seconds`` where the frontier
measured the same method) and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from mc_bench.config import load_manifests
from mc_bench.paths import REPO_ROOT
from mc_bench.study.costs import Rates, measured_rates, method_costs, study_hours

# Assumed, not measured: SD 1.5 at 512 px, bf16, one H100. A training step at batch 8 with gradient checkpointing
# ~0.4 s; one image sampled with 30 steps at batch 16 (classifier-free guidance doubles the UNet's batch) ~0.15 s;
# evaluating one generated image (Inception-v3 features, CLIP ViT-L/14 score, ImageReward) ~0.02 s; profiling a
# new dataset (CLIP ViT-L/14 on 1,000 images and captions) ~10 s. They give ~8 minutes per cell and ~43 GPU-hours
# for the 320-cell study, the low end of the profile's own 40-60 h estimate.
ASSUMED_H100 = Rates(step_seconds=0.4, image_seconds=0.15, eval_image_seconds=0.02, profile_seconds=10.0,
                     source="estimate: assumed H100 rates for SD 1.5, 512 px, bf16 (benchmarks/paper_cost.py)")
RUNG_FRACTION = 4  # the lower rung of successive halving is a quarter of the full budget (cpu-paper-rung25 / 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates-from", default=None, help="a study folder whose measured rates replace the estimate")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "selection"))
    args = parser.parse_args()

    frames = []
    cpu_dir = REPO_ROOT / "results" / "cpu-paper"
    cpu = load_manifests().profiles["cpu-paper"]
    check = method_costs(cpu, measured_rates(cpu_dir), rung_steps=(cpu.train.steps // RUNG_FRACTION,))
    measured = pd.read_csv(cpu_dir / "selection_summary.csv")[["method", "seconds_per_dataset"]]
    check = check.merge(measured.rename(columns={"seconds_per_dataset": "measured_seconds"}), on="method", how="left")
    frames.append(check.assign(setting="cpu-paper (this machine's CPU)"))

    paper = load_manifests(REPO_ROOT / "data_manifests" / "paper").profiles["paper"]
    rates = measured_rates(args.rates_from) if args.rates_from else ASSUMED_H100
    estimate = method_costs(paper, rates, rung_steps=(paper.train.steps // RUNG_FRACTION,))
    frames.append(estimate.assign(setting="paper (GPU)", measured_seconds=float("nan")))
    print(f"paper profile, whole grid ({len(paper.models)} x {len(paper.datasets)}): "
          f"{study_hours(paper, rates):.1f} device-hours ({rates.source})")

    table = pd.concat(frames, ignore_index=True)
    first = ["setting", "method", "seconds_per_dataset", "measured_seconds", "device_hours_per_dataset", "cost_basis"]
    table = table[first + [c for c in table.columns if c not in first]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "paper_cost.csv", index=False, float_format="%.6g")
    with pd.option_context("display.width", 200, "display.max_colwidth", 60):
        print(table[first].round(4).to_string(index=False))


if __name__ == "__main__":
    main()
