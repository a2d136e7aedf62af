#!/usr/bin/env python
"""
Approximate against exact search at library scale: the faiss index `blap index` builds above
`EXACT_SEARCH_MAX_ROWS` vectors (`transformers_blap.search.build_faiss_index`, an HNSW graph) against exact
inner-product search (`IndexFlatIP`) over the same vectors.

Vectors: `--num-vectors` random unit vectors of the stage-1 embedding width (`BlapConfig().embed_dim`, 256). Real
embeddings are not spread evenly over the sphere: they gather by style, instrument and recording. `--distribution
clustered` (default) draws them from a mixture of `--clusters` random directions with Gaussian spread (queries from
the same mixture); `--distribution uniform` draws them uniformly on the sphere, where every vector is about as far
from every other and no index beats a full scan by much (the worst case, reported for honesty).

Reported: build time and the index's added resident memory (`RssAnon`), exact and approximate queries per second
(all queries in one batch, `--repeats` runs, the fastest kept: the machine is shared), and recall@k of the
approximate top k against the exact top k, for the package's `efSearch` and a sweep of others.

    PYTHONPATH=src python scripts/benchmark_search.py                       # 1M x 256, clustered
    PYTHONPATH=src python scripts/benchmark_search.py --distribution uniform --json benchmarks/search-uniform.json
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import anonymous_rss_bytes  # noqa: E402

from transformers_blap import BlapConfig  # noqa: E402
from transformers_blap.search import (  # noqa: E402
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_NEIGHBORS,
    build_faiss_index,
)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_vectors(
    count: int, num_queries: int, dim: int, distribution: str, clusters: int, spread: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(vectors (count, dim), queries (num_queries, dim))`, unit-norm float32."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((clusters, dim), dtype=np.float32))

    def draw(n: int) -> np.ndarray:
        noise = rng.standard_normal((n, dim), dtype=np.float32)
        return (
            noise if distribution == "uniform" else centers[rng.integers(0, clusters, n)] + spread / dim**0.5 * noise
        )

    vectors = np.concatenate([unit(draw(min(100_000, count - start))) for start in range(0, count, 100_000)])
    return np.ascontiguousarray(vectors, dtype=np.float32), unit(draw(num_queries)).astype(np.float32)


def queries_per_second(index: faiss.Index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """The best of `repeats` batched searches, in queries per second, and the ids found."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best, ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=BlapConfig().embed_dim, help="default: the stage-1 embed_dim")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--distribution", choices=("clustered", "uniform"), default="clustered")
    parser.add_argument("--clusters", type=int, default=10_000, help="mixture components (clustered)")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a component (clustered)")
    parser.add_argument("--ef-search", type=int, nargs="*", default=[32, 64, 128, 256], help="efSearch sweep")
    parser.add_argument(
        "--neighbors", type=int, default=HNSW_NEIGHBORS, help="graph links per vector, M (default: the package's)"
    )
    parser.add_argument(
        "--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION, help="efConstruction (default: the package's)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="faiss threads (default 1: OpenMP threads spin on a shared machine)"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)

    vectors, queries = random_vectors(
        args.num_vectors, args.queries, args.dim, args.distribution, args.clusters, args.spread, args.seed
    )
    results = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__},"
        f" {faiss.omp_get_max_threads()} threads, load average {os.getloadavg()[0]:.1f}",
        "num_vectors": args.num_vectors,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "distribution": args.distribution,
    }

    rss = anonymous_rss_bytes()
    start = time.perf_counter()
    exact = build_faiss_index(vectors, approximate=False)
    results["exact_build_s"] = time.perf_counter() - start
    results["exact_index_bytes"] = anonymous_rss_bytes() - rss
    results["exact_qps"], truth = queries_per_second(exact, queries, args.k, args.repeats)
    del exact

    rss = anonymous_rss_bytes()
    start = time.perf_counter()
    approximate = build_faiss_index(
        vectors, approximate=True, neighbors=args.neighbors, ef_construction=args.ef_construction
    )
    results["approximate_build_s"] = time.perf_counter() - start
    results["approximate_index_bytes"] = anonymous_rss_bytes() - rss
    graph = approximate.hnsw
    results["index"] = (
        f"{type(approximate).__name__}, M {graph.nb_neighbors(1)}, efConstruction {graph.efConstruction}"
    )
    results["default_ef_search"] = graph.efSearch
    sweep = []
    for ef_search in sorted({*args.ef_search, HNSW_EF_SEARCH}):
        graph.efSearch = ef_search
        qps, found = queries_per_second(approximate, queries, args.k, args.repeats)
        sweep.append(
            {"ef_search": ef_search, "qps": qps, "speedup": qps / results["exact_qps"], "recall": recall(found, truth)}
        )
    results["sweep"] = sweep
    default = next(row for row in sweep if row["ef_search"] == results["default_ef_search"])
    results["targets"] = {
        f"recall@{args.k} >= 0.95": default["recall"] >= 0.95,
        "speedup >= 50x": default["speedup"] >= 50,
    }

    print(results["machine"])
    print(
        f"{args.num_vectors:,} x {args.dim} {args.distribution} vectors, {args.queries} queries, k={args.k}\n"
        f"exact (IndexFlatIP): build {results['exact_build_s']:.1f} s,"
        f" {results['exact_index_bytes'] / 2**20:.0f} MiB, {results['exact_qps']:.0f} queries/s\n"
        f"approximate ({results['index']}): build {results['approximate_build_s']:.1f} s,"
        f" {results['approximate_index_bytes'] / 2**20:.0f} MiB"
    )
    print(f"| efSearch | queries/s | x exact | recall@{args.k} |\n| ---: | ---: | ---: | ---: |")
    for row in sweep:
        marker = " (default)" if row["ef_search"] == results["default_ef_search"] else ""
        print(f"| {row['ef_search']}{marker} | {row['qps']:.0f} | {row['speedup']:.1f} | {row['recall']:.3f} |")
    print("targets at the default efSearch:", results["targets"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
