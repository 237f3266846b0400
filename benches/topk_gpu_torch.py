#!/usr/bin/env python3
"""Exact top-k on the GPU with torch: the baseline that `gpu_bench topk` (examples/gpu_bench/topk.rs) is compared
with (docs/performance.md#gpu-reference-figures); benches/gpu/run.sh runs both.

    python3 benches/topk_gpu_torch.py [--chunk-docs 131072] [--repeat 5]

Same shape and method as the Rust example: random normal corpus (1M x 1024) and queries (1024) generated on the
GPU, k = 100; per corpus chunk one matmul and torch.topk, merged into the running top-k with a second torch.topk
over the running and new candidates; one warm-up, then the median of `repeat` runs, each ended by
torch.cuda.synchronize(). Prints one JSON line per measurement:

- chunked top-k with f32 products (TF32 off, torch's default for matmul) and with TF32 products,
- one unchunked top-k (the whole 1024 x 1M score matrix at once) in f32, torch at its simplest,
- the chunked matmuls alone (f32, TF32, bf16), which bound any selection, and chunked top-k over bf16 products.

Needs only torch with CUDA (PyTorch 2.11 was the target).
"""

import argparse
import json
import statistics
import time

import torch


def chunked_top_k(queries, corpus, k, chunk):
    """Running top-k over corpus chunks: never more than queries x chunk scores at once."""
    best_scores = None
    best_ids = None
    for start in range(0, corpus.shape[0], chunk):
        scores = queries @ corpus[start : start + chunk].T
        take = min(k, scores.shape[1])
        chunk_scores, chunk_ids = torch.topk(scores, take, dim=1)
        chunk_ids += start
        if best_scores is None:
            best_scores, best_ids = chunk_scores, chunk_ids
            continue
        merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
        merged_ids = torch.cat([best_ids, chunk_ids], dim=1)
        best_scores, positions = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
        best_ids = torch.gather(merged_ids, 1, positions)
    return best_scores, best_ids


def whole_top_k(queries, corpus, k):
    return torch.topk(queries @ corpus.T, k, dim=1)


def matmuls_only(queries, corpus, chunk):
    for start in range(0, corpus.shape[0], chunk):
        queries @ corpus[start : start + chunk].T


def timed(run, repeat):
    """Milliseconds of `repeat` runs after one warm-up; results are copied to the host like the Rust path does."""
    run()
    torch.cuda.synchronize()
    runs = []
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        result = run()
        if result is not None:
            [tensor.cpu() for tensor in result]
        torch.cuda.synchronize()
        runs.append((time.perf_counter() - started) * 1e3)
    return runs


def report(what, gemm, shape, runs):
    print(
        json.dumps(
            {
                "kind": "bench",
                "what": what,
                "gemm": gemm,
                "shape": shape,
                "median_ms": statistics.median(runs),
                "runs_ms": runs,
            }
        ),
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_000_000, help="corpus size")
    parser.add_argument("--dim", type=int, default=1024, help="vector dimension")
    parser.add_argument("--queries", type=int, default=1024, help="query count")
    parser.add_argument("--k", type=int, default=100, help="hits per query")
    parser.add_argument("--chunk-docs", type=int, default=131_072, help="documents per chunk (as the Rust example)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs after one warm-up")
    parser.add_argument("--skip-whole", action="store_true", help="skip the unchunked run (needs queries x docs x 4 B)")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device("cuda")
    corpus = torch.randn(args.docs, args.dim, device=device, dtype=torch.float32)
    queries = torch.randn(args.queries, args.dim, device=device, dtype=torch.float32)
    shape = {
        "docs": args.docs,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "chunk_docs": args.chunk_docs,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }

    for gemm, tf32 in (("f32", False), ("tf32", True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        report(
            "torch_chunked_topk",
            gemm,
            shape,
            timed(lambda: chunked_top_k(queries, corpus, args.k, args.chunk_docs), args.repeat),
        )
        report("torch_matmul_only", gemm, shape, timed(lambda: matmuls_only(queries, corpus, args.chunk_docs), args.repeat))
    torch.backends.cuda.matmul.allow_tf32 = False
    if not args.skip_whole:
        report("torch_whole_topk", "f32", shape, timed(lambda: whole_top_k(queries, corpus, args.k), args.repeat))

    corpus = corpus.to(torch.bfloat16)
    queries = queries.to(torch.bfloat16)
    torch.cuda.empty_cache()
    report("torch_chunked_topk", "bf16", shape, timed(lambda: chunked_top_k(queries, corpus, args.k, args.chunk_docs), args.repeat))
    report("torch_matmul_only", "bf16", shape, timed(lambda: matmuls_only(queries, corpus, args.chunk_docs), args.repeat))


if __name__ == "__main__":
    main()
