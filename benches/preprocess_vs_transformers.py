#!/usr/bin/env python3
"""Qwen2-VL image preprocessing, ours against transformers', images per second on one core.

    python3 benches/preprocess_vs_transformers.py [--json RESULT.json]

Runs `cargo bench --bench preprocess` (honouring CARGO_TARGET_DIR) and transformers' Qwen2VLImageProcessor on the
same 640x480 JPEGs (tests/fixtures/preprocess/bench/), both doing decode + smart_resize + resize + normalise +
patchify with transformers' default min/max pixels, both on one thread, and prints both rates and their ratio.

Both sides run their default image processor: umrank's torchvision backend, and transformers' Qwen2VLImageProcessor,
which in transformers 5 is the torchvision implementation when torchvision is installed (what AutoImageProcessor
loads) and falls back to the PIL/numpy one without it; the script reports which ran. Requires: pip install
transformers pillow numpy torch torchvision.
"""

import os

# One thread for every numeric library, set before numpy is imported.
for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "RAYON_NUM_THREADS"]:
    os.environ[var] = "1"

import argparse
import glob
import io
import json
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_IMAGES = os.path.join(REPO, "tests", "fixtures", "preprocess", "bench")
WARMUP_S = 1.0
MEASURE_S = 4.0


def pin_to_one_core():
    """Both sides run on the same single core, so "per core" means the same thing for each."""
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return core
    return None


def cargo_bench(*extra):
    return subprocess.run(
        ["cargo", "bench", "--bench", "preprocess", *extra], cwd=REPO, capture_output=True, text=True, env=os.environ
    )


def build_ours():
    """Compiles on every core: only the measurement is pinned."""
    print("building: cargo bench --bench preprocess --no-run", flush=True)
    proc = cargo_bench("--no-run")
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"cargo bench --no-run failed with status {proc.returncode}")


def run_ours():
    print("running: cargo bench --bench preprocess", flush=True)
    proc = cargo_bench()
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"cargo bench failed with status {proc.returncode}")
    for line in proc.stdout.splitlines():
        if not line.startswith("RESULT"):
            print(f"  {line}")
    match = re.search(r"^RESULT images_per_sec=([0-9.]+)$", proc.stdout, re.MULTILINE)
    if match is None:
        raise SystemExit("cargo bench printed no RESULT line:\n" + proc.stdout)
    return float(match.group(1))


def run_transformers(images):
    from PIL import Image
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor()
    print(f"running transformers {type(processor).__name__} (default min/max pixels)", flush=True)

    def one(data):
        out = processor(images=Image.open(io.BytesIO(data)), return_tensors="np")
        return out["pixel_values"].shape

    shape = one(images[0])
    print(f"  pixel_values {shape}, grid_thw {processor(images=Image.open(io.BytesIO(images[0])))['image_grid_thw']}")
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < WARMUP_S:
        one(images[i % len(images)])
        i += 1
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < MEASURE_S:
        one(images[done % len(images)])
        done += 1
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the figures to this file (read by benches/all.py)")
    args = parser.parse_args()
    build_ours()
    core = pin_to_one_core()
    paths = sorted(glob.glob(os.path.join(BENCH_IMAGES, "*.jpg")))
    if not paths:
        raise SystemExit(f"no JPEGs in {BENCH_IMAGES}")
    images = [open(p, "rb").read() for p in paths]
    print(f"{len(images)} JPEGs from {BENCH_IMAGES}, pinned to core {core}")
    ours = run_ours()
    theirs = run_transformers(images)
    print()
    print(f"umrank (Rust):            {ours:8.1f} images/s per core")
    print(f"transformers (Python):    {theirs:8.1f} images/s per core")
    print(f"ratio:                    {ours / theirs:8.1f}x")
    print(f"bar (240/s, docs/performance.md#cpu-bars): {'met' if ours >= 240 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"ours": ours, "transformers": theirs, "processor": "Qwen2VLImageProcessor"}, out)


if __name__ == "__main__":
    main()
