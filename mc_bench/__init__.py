"""mc_bench: a reproducible benchmark kit for Match & Choose (arXiv 2508.10993).

Stages, one module each: :mod:`~mc_bench.profile`, :mod:`~mc_bench.finetune`, :mod:`~mc_bench.evaluate`,
:mod:`~mc_bench.graph`, :mod:`~mc_bench.choose`, :mod:`~mc_bench.report`; the offline world lives in
:mod:`~mc_bench.world`, manifests in :mod:`~mc_bench.config`, fine-tuning histories in :mod:`~mc_bench.history`.
"""

__version__ = "0.1.0"
