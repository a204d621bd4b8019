"""How leave-one-dataset-out evaluation of Match & Choose scales with the size of the history.

    python benchmarks/lodo_scale.py [--sizes 100x10,300x30,1000x100] [--jobs 2]

For each size (models x datasets) a synthetic history with planted structure is built, and the default M&C is
evaluated leave-one-dataset-out (per held-out dataset: the prior's inner choice, the inner cross-validation over
boosting rounds, the matching graph and its embedding, LightGBM). Prints seconds per size with the cost of one
graph + embedding, and last ``ratio=<seconds of the largest size / 60>`` against the 60 s goal for 1,000 models x
100 datasets on 2 cores (``--jobs 2``). The default M&C of main 8eaf96e4 (node2vec + LightGBM, no inner choices)
took 132 s there.
"""

import argparse
import time
import warnings

from mc_bench.select import MatchAndChoose, leave_one_dataset_out
from mc_bench.select.graph import SpectralGraphEmbedding, matching_sparse_graph
from mc_bench.select.synthetic import synthetic_history

GOAL_SECONDS = 60.0

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100x10,300x30,1000x100")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    seconds = None
    for size in args.sizes.split(","):
        n_models, n_datasets = map(int, size.split("x"))
        history = synthetic_history(n_models=n_models, n_datasets=n_datasets, seed=0)
        est = MatchAndChoose()
        t0 = time.perf_counter()
        graph = matching_sparse_graph(history.without_runs(history.datasets[0]))
        SpectralGraphEmbedding().fit(graph)  # for scale: the embedding an ablation adds (the default has none)
        t_embed = time.perf_counter() - t0
        start = time.perf_counter()
        df = leave_one_dataset_out(history, {"M&C": est}, n_jobs=args.jobs)
        seconds = time.perf_counter() - start
        print(f"{n_models:5d} models x {n_datasets:4d} datasets: LODO {seconds:7.1f} s "
              f"({n_datasets} folds; one graph + spectral embedding {t_embed:.2f} s; "
              f"{graph.adjacency.nnz // 2} edges; mean rel@1 {df['rel@1'].mean():.3f})", flush=True)
    print(f"ratio={seconds / GOAL_SECONDS:.2f}")
