#!/usr/bin/env python3
"""Every CPU benchmark of the project, one table: our figure, the peer's figure measured in the same run, the ratio.

    python3 benches/all.py [--quick] [--json benches/results.json]

From the repository root, with a Python that has transformers, pillow, numpy and faiss-cpu (a peer that does not
import is reported as n/a), and torch, peft and gguf for the SmolLM2 rows, with sentence-transformers for the
throughput rows (without them, which also turn the GGUF into the weights both sides load, those rows are left out). CARGO_TARGET_DIR is honoured; the Rust side runs through `cargo bench`, whose profile
is the release profile, so a tree built for `cargo test --release` is reused.

| benchmark | ours | peer |
|---|---|---|
| image preprocessing (decode + smart_resize + normalise + patchify), one core | preprocess bench | transformers Qwen2VLImageProcessor |
| exact top-k, k = 100, 2 threads | topk bench | faiss-cpu IndexFlatIP, chunked numpy |
| reranker training step, tiny Qwen2-VL, the default levers | train_levers bench | the same loop on the plain path (padded, no vision cache, no shared prefix) |
| reranker training step (LoRA and full fine-tuning), allocator keeping freed memory | train_levers bench | the same with glibc's defaults |
| training step peak memory and time at 1k-8k tokens, Qwen2.5-VL-shaped decoder, blocked attention + recomputation | train_memory bench | the reference path (materialised scores, nothing recomputed) |
| the memory plan's estimate of those peaks | umrank::plan | the measured peak |
| SmolLM2-135M LoRA training step peak memory, 4 x (1 + 4) x 128 tokens, default levers and without shared prefix and packing | smollm2_memory bench | transformers + peft on the same weights and tokens (plain and with gradient checkpointing) |
| SmolLM2-135M scoring peak memory with the trained adapter, batches of 8 | smollm2_memory bench | transformers + peft under no_grad; the plan's weights + one batch |
| (a) SmolLM2-135M LoRA training step: default levers, padded, and without layer recomputation | throughput bench | transformers + peft, same tokens |
| (b) SmolLM2-135M scoring throughput, batches of 8 | throughput bench | transformers, same tokens |
| (c) all-MiniLM-L6-v2 embedding throughput, batches of 64 | throughput bench | sentence-transformers, same texts |

The GPU part (candle CUDA against PyTorch, docs/performance.md#gpu-reference-figures) is benches/gpu/run.sh, run on a
device machine. Each sub-benchmark is also a command of its own (see the scripts and benches/*.rs); wall-clock figures
move with whatever else the machine runs, so the table prints the date, the CPU and the load average beside them.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOPK_SHAPES = {"small": "100k x 384-d corpus, 2000 queries", "large": "200k x 768-d corpus, 1000 queries"}


def machine():
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}"


def load():
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run(command, **kwargs):
    print("running:", " ".join(str(c) for c in command), flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{command[0]} failed with status {done.returncode}")
    return done.stdout


def preprocess(scratch):
    out = scratch / "preprocess.json"
    run([sys.executable, "benches/preprocess_vs_transformers.py", "--json", str(out)])
    figures = json.loads(out.read_text())
    return [("image preprocessing, one core", "images/s", figures["ours"],
             f"transformers {figures['processor']}", figures["transformers"])]


def topk(scratch, quick):
    out = scratch / "topk.json"
    shape = "small" if quick else "all"
    run([sys.executable, "benches/topk_vs_faiss.py", "--shape", shape, "--json", str(out)])
    figures = json.loads(out.read_text())
    rows = []
    for name, result in figures["shapes"].items():
        label = f"exact top-{figures['k']}, {TOPK_SHAPES.get(name, name)}, {figures['threads']} threads"
        for peer, peer_name in (("faiss", "faiss-cpu IndexFlatIP"), ("numpy", "chunked numpy matmul")):
            rows.append((label, "queries/s", result["ours"], peer_name, result.get(peer)))
    return rows


def train_levers(quick):
    steps = ["--steps", "4", "--rounds", "1", "--sides", "56"] if quick else ["--sides", "56"]

    def figures(*extra):
        stdout = run(["cargo", "bench", "--bench", "train_levers", "--", *steps, *extra])
        return {(r["side"], r["variant"]): r["seq_per_s"]
                for r in (json.loads(line[len("RESULT "):]) for line in stdout.splitlines()
                          if line.startswith("RESULT "))}

    def plain(figures, side):
        return next(rate for (s, variant), rate in figures.items() if s == side and variant.startswith("plain"))

    rows = []
    lora = figures("--retain-freed-memory")
    for (side, variant), rate in sorted(lora.items()):
        if not variant.startswith("plain"):
            rows.append((f"training step, tiny Qwen2-VL LoRA, {side} px, lever: {variant}", "seq/s", rate,
                         "plain path (padded, no cache, no shared prefix)", plain(lora, side)))
    defaults = {"lora": figures()}
    retained = {"lora": lora, "full": figures("--tune", "full", "--retain-freed-memory")}
    defaults["full"] = figures("--tune", "full")
    for tune in ("lora", "full"):
        for (side, variant), rate in sorted(retained[tune].items()):
            if variant.startswith("all three"):
                rows.append((f"training step, tiny Qwen2-VL {tune}, {side} px, allocator keeping freed memory",
                             "seq/s", rate, "glibc allocator defaults", defaults[tune].get((side, variant))))
    return rows


def train_memory(quick):
    lengths = "256,512" if quick else "256,512,1024,2048"
    stdout = run(["cargo", "bench", "--bench", "train_memory", "--", "--lengths", lengths])
    points = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    by = {(p["len"], p["path"]): p for p in points}
    mib = 1024 * 1024
    rows = []
    for (length, path), point in sorted(by.items()):
        if path != "blocked+recompute" or point.get("skipped"):
            continue
        shape = f"Qwen2.5-VL-shaped decoder LoRA, {point['tokens']} tokens"
        reference = by.get((length, "reference"), {})
        measured = None if reference.get("skipped") else reference
        rows.append((f"training step peak memory, {shape}, blocked attention + recomputation", "MiB",
                     point["measured_bytes"] / mib, "reference path (plan if it did not fit)",
                     (measured or reference).get("measured_bytes", reference.get("plan_bytes", 0)) / mib))
        rows.append((f"training step time, {shape}, blocked attention + recomputation", "s", point["seconds"],
                     "reference path", measured["seconds"] if measured else None))
        for p in (point, measured):
            if p:
                rows.append((f"memory plan, {shape}, {p['path']}", "MiB", p["plan_bytes"] / mib,
                             "measured peak", p["measured_bytes"] / mib))
    return rows


def smollm2(scratch):
    missing = [m for m in ("torch", "transformers", "peft", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"SmolLM2 rows left out: this Python lacks {', '.join(missing)}", flush=True)
        return []
    out = scratch / "smollm2.json"
    run([sys.executable, "benches/smollm2_vs_peft.py", "--json", str(out)])
    figures = json.loads(out.read_text())
    ours, theirs = figures["ours"], figures["transformers_peft"]
    mib = 1024 * 1024
    step = "LoRA training step peak memory, SmolLM2-135M f32, 4 x (1 + 4) x 128 tokens"
    rows = []
    for name, levers in (("default", "default levers"), ("plain", "--no-shared-prefix --no-packing")):
        for peer, peer_name in (("train", "transformers + peft"),
                                ("train-checkpointing", "transformers + peft, gradient checkpointing")):
            rows.append((f"{step}, {levers}", "MiB", ours[name]["measured_bytes"] / mib, peer_name,
                         theirs[peer]["measured_bytes"] / mib))
    plan = ours["eval"]["plan"]
    score = (f"scoring peak memory, SmolLM2-135M f32 + the step's adapter, {ours['eval']['pairs']} pairs in "
             f"batches of {ours['eval']['batch']}")
    rows.append((score, "MiB", ours["eval"]["measured_bytes"] / mib, "transformers + peft, no_grad",
                 theirs["eval"]["measured_bytes"] / mib))
    rows.append((score, "MiB", ours["eval"]["measured_bytes"] / mib, "its weights + adapter + one batch (plan)",
                 sum(plan[k] for k in ("weights", "adapter", "activations", "attention_workspace")) / mib))
    return rows


def throughput(scratch):
    missing = [m for m in ("torch", "transformers", "peft", "gguf", "sentence_transformers")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"throughput rows (a)-(c) left out: this Python lacks {', '.join(missing)}", flush=True)
        return []
    out = scratch / "throughput.json"
    run([sys.executable, "benches/throughput_vs_torch.py", "--json", str(out)])
    return [(r["label"], r["unit"], r["ours"], r["peer"], r["theirs"]) for r in json.loads(out.read_text())]


def table(rows, when, where, loadavg):
    lines = [f"benchmarks of {when} on {where} (load average before: {loadavg})", "",
             "| benchmark | unit | ours | peer | peer's figure | ratio |", "|---|---|---|---|---|---|"]
    for label, unit, ours, peer, theirs in rows:
        ratio = f"x{ours / theirs:.2f}" if theirs else "n/a"
        theirs_text = f"{theirs:.1f}" if theirs else "n/a"
        lines.append(f"| {label} | {unit} | {ours:.1f} | {peer} | {theirs_text} | {ratio} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and only the small top-k shape")
    parser.add_argument("--json", type=Path, help="also write the rows, date and machine to this file")
    args = parser.parse_args()
    when = datetime.date.today().isoformat()
    where = machine()
    loadavg = load()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        rows = (preprocess(scratch) + topk(scratch, args.quick) + train_levers(args.quick)
                + train_memory(args.quick) + smollm2(scratch) + throughput(scratch))
    print()
    print(table(rows, when, where, loadavg))
    if args.json:
        args.json.write_text(json.dumps({"date": when, "machine": where, "load_before": loadavg, "rows": [
            dict(zip(("benchmark", "unit", "ours", "peer", "peer_figure"), row)) for row in rows]}, indent=1))


if __name__ == "__main__":
    main()
