"""mc_bench: a reproducible benchmark kit for Match & Choose (arXiv 2508.10993).

One subpackage per part of the study, in the paper's words, over small leaf modules:

* :mod:`~mc_bench.world` — the offline world: datasets, dataset folders, the tiny CLIP, the zoo of T2I models;
* :mod:`~mc_bench.train` — the diffusion loss, LoRA and full fine-tuning, generation, the zoo's pretraining;
* :mod:`~mc_bench.evaluate` and :mod:`~mc_bench.weights` — FID/KID, CLIP score, ImageReward, with provenance;
* :mod:`~mc_bench.profile` — stage 1: dataset profiles and their distribution-level similarity;
* :mod:`~mc_bench.select` — match and choose: history, matching graph, ranker, baselines (imports no torch);
* :mod:`~mc_bench.study` — the grid on Dask, the study's tables, the report;
* leaves: :mod:`~mc_bench.paths`, :mod:`~mc_bench.io`, :mod:`~mc_bench.errors`, :mod:`~mc_bench.images`, and the
  typed manifests of :mod:`~mc_bench.config`.

A module imports only modules of its own part or of the parts below it (``tests/test_architecture.py``).
"""

__version__ = "0.1.0"
