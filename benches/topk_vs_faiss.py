#!/usr/bin/env python3
"""Exact top-k throughput: umrank against faiss-cpu and numpy on the same data (docs/performance.md#cpu-bars).

One command, from the repository root:

    CARGO_TARGET_DIR=/work/main/target /work/pyref/bin/python benches/topk_vs_faiss.py [--shape small|large|all]

It runs `cargo bench --bench topk`, which generates the random unit vectors from a fixed seed, writes them as .npy
files and times our exact top-k; then it times faiss-cpu `IndexFlatIP` (`pip install faiss-cpu`; skipped if it does
not import) and a chunked numpy search (one BLAS matmul per corpus chunk, `argpartition` for the top k, merged
across chunks) on those same files, all with the same thread count (2 by default), and prints queries/s, the
ratios, and how many of our top-k documents each baseline also returns (float summation order differs between
implementations, so near-ties at the k-th place may swap).

Shapes: small = 100k x 384-d corpus, 2000 queries; large = 200k x 768-d corpus, 1000 queries; k = 100.

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE may be set on this machine (tuned for other work), and they slow numpy's
OpenBLAS down; the script removes both from the environment of the baseline processes only. Each baseline runs in
its own process so that the thread settings (OMP/OpenBLAS/MKL_NUM_THREADS) apply before numpy and faiss load.

Versions used for the figures in the mine helper's report: numpy 2.4.6, faiss-cpu 1.15.1, Python 3.11.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SLOWING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def numpy_top_k(queries, corpus, k, chunk=16384):
    """Exact top-k by chunked matmul: never the full Q x N score matrix."""
    import numpy as np

    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(corpus), chunk):
        scores = queries @ corpus[start:start + chunk].T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        ids = np.concatenate([best_ids, part + start], axis=1)
        keep = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_ids = np.take_along_axis(ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def faiss_top_k(queries, corpus, k, threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(corpus.shape[1])
    index.add(corpus)
    _, ids = index.search(queries, k)
    return ids


def run_baseline(name, directory, k, threads, repeat):
    """Runs inside the baseline process: times `repeat` searches, prints JSON."""
    import numpy as np

    corpus = np.load(directory / "corpus.npy")
    queries = np.load(directory / "queries.npy")
    best, ids = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        ids = faiss_top_k(queries, corpus, k, threads) if name == "faiss" else numpy_top_k(queries, corpus, k)
        best = min(best, time.perf_counter() - started)
    ours = np.load(directory / "ours_top.npy")
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ours.tolist(), ids.tolist())])
    print(json.dumps({"seconds": best, "queries_per_s": len(queries) / best, "overlap": float(overlap)}))


def baseline(name, directory, args):
    env = {key: value for key, value in os.environ.items() if key not in SLOWING_VARIABLES}
    env.update({variable: str(args.threads) for variable in THREAD_VARIABLES})
    command = [sys.executable, __file__, "--baseline", name, "--dir", str(directory), "--k", str(args.k),
               "--threads", str(args.threads), "--repeat", str(args.repeat)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{name} baseline failed (skipped):\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours(args, data_dir):
    command = ["cargo", "bench", "--bench", "topk", "--", "--shape", args.shape, "--threads", str(args.threads),
               "--k", str(args.k), "--repeat", str(args.repeat), "--data-dir", str(data_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result["shape"]] = result
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="all", choices=["small", "large", "all"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/umrank-topk-bench"))
    parser.add_argument("--baseline", choices=["faiss", "numpy"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures to this file (read by benches/all.py)")
    args = parser.parse_args()
    if args.baseline:
        run_baseline(args.baseline, args.dir, args.k, args.threads, args.repeat)
        return

    results = ours(args, args.data_dir)
    print(f"exact top-k, k={args.k}, {args.threads} threads, best of {args.repeat} (queries/s; overlap = share of "
          f"our top-k the baseline also returns)")
    print(f"{'shape':<8}{'ours':>10}{'faiss':>10}{'numpy':>10}{'ours/faiss':>12}{'ours/numpy':>12}"
          f"{'overlap faiss':>15}{'overlap numpy':>15}")
    figures = {}
    for shape, result in results.items():
        directory = Path(result["dir"])
        ours_rate = result["queries_per_s"]
        row = {name: baseline(name, directory, args) for name in ("faiss", "numpy")}
        rate = {name: (value["queries_per_s"] if value else None) for name, value in row.items()}
        overlap = {name: (value["overlap"] if value else None) for name, value in row.items()}
        cell = lambda value, fmt: format(value, fmt) if value is not None else "n/a"
        ratio = lambda other: ours_rate / other if other else None
        print(f"{shape:<8}{ours_rate:>10.0f}{cell(rate['faiss'], '>10.0f'):>10}{cell(rate['numpy'], '>10.0f'):>10}"
              f"{cell(ratio(rate['faiss']), '>12.2f'):>12}{cell(ratio(rate['numpy']), '>12.2f'):>12}"
              f"{cell(overlap['faiss'], '>15.4f'):>15}{cell(overlap['numpy'], '>15.4f'):>15}")
        figures[shape] = {"ours": ours_rate, **rate}
    if args.json:
        args.json.write_text(json.dumps({"k": args.k, "threads": args.threads, "shapes": figures}))


if __name__ == "__main__":
    main()
