"""Synthetic fine-tuning histories with planted structure, for tests and scale benchmarks.

Datasets belong to ``n_domains`` domains; each domain has a latent need vector, each dataset a small variation of
it (``v_d``). Each model has a latent skill vector ``u_m`` and a general strength ``b_m``. The quality after
fine-tuning is ``sigmoid(u_m · v_d + b_m + noise)`` (higher is better).

What a selector can observe: model features — noisy skills ``skill_i`` and ``log_params`` (a noisy ``b_m``);
dataset features — the exact ``domain`` (categorical, like a curated dataset card) and a *noisy* profile embedding
``emb_i = v_d + ε`` whose cosine is the dataset similarity. Matching model skills to the dataset's domain is
the planted structure: global-best sees only strength, and similarity-based baselines see only the noisy
profiles.

With ``probe_noise``, a ``probe`` table is added: ``sigmoid(u_m · v_d + b_m + noise')`` with ``noise'`` of that
scale — the quality of a model *before* fine-tuning on the dataset, which tracks the quality after it more or less
closely (:class:`~mc_bench.select.baselines.Probe`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .history import History


def synthetic_tables(n_models: int = 30, n_datasets: int = 20, n_domains: int = 4, n_latent: int = 3,
                     noise: float = 0.1, model_noise: float = 0.3, dataset_noise: float = 1.0,
                     domain_feature: bool = True, probe_noise: float | None = None,
                     seed: int = 0) -> dict[str, pd.DataFrame]:
    """The raw tables (runs, model_features, dataset_features, and ``probe`` with ``probe_noise``) of a synthetic
    history."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(n_domains, n_latent))
    domain = rng.integers(0, n_domains, size=n_datasets)
    v = centres[domain] + rng.normal(scale=0.3, size=(n_datasets, n_latent))
    u = rng.normal(size=(n_models, n_latent))
    b = rng.normal(scale=0.5, size=n_models)
    logits = u @ v.T + b[:, None] + rng.normal(scale=noise, size=(n_models, n_datasets))
    quality = 1 / (1 + np.exp(-logits))
    models = [f"m{i:04d}" for i in range(n_models)]
    datasets = [f"d{j:03d}" for j in range(n_datasets)]
    runs = pd.DataFrame({"model": np.repeat(models, n_datasets), "dataset": np.tile(datasets, n_models),
                         "accuracy": quality.reshape(-1)})
    mf = pd.DataFrame({"model": models, "log_params": b + rng.normal(scale=model_noise, size=n_models)})
    for i in range(n_latent):
        mf[f"skill_{i}"] = u[:, i] + rng.normal(scale=model_noise, size=n_models)
    df = pd.DataFrame({"dataset": datasets})
    if domain_feature:
        df["domain"] = [f"domain{k}" for k in domain]
    for i in range(n_latent):
        df[f"emb_{i}"] = v[:, i] + rng.normal(scale=dataset_noise, size=n_datasets)
    tables = {"runs": runs, "model_features": mf, "dataset_features": df}
    if probe_noise is not None:
        probe_rng = np.random.default_rng([seed, 1])  # the other tables do not change with probe_noise
        before = 1 / (1 + np.exp(-(logits + probe_rng.normal(scale=probe_noise, size=logits.shape))))
        tables["probe"] = pd.DataFrame({"model": np.repeat(models, n_datasets), "dataset": np.tile(datasets, n_models),
                                        "accuracy": before.reshape(-1)})
    return tables


def synthetic_history(**kwargs) -> History:
    """A validated :class:`History` from :func:`synthetic_tables` (same keyword arguments)."""
    t = synthetic_tables(**kwargs)
    return History.from_tables(t["runs"], {"accuracy": "higher"}, t["model_features"], t["dataset_features"],
                               source="synthetic", probe=t.get("probe"))
