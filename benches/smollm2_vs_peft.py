#!/usr/bin/env python3
"""SmolLM2-135M LoRA training step and scoring, peak memory: umrank against transformers + peft (issue 17).

    python3 benches/smollm2_vs_peft.py [--json RESULT.json] [--eval-pairs 80]

With a Python that has torch, transformers, peft and gguf (`pip install torch transformers peft gguf`; keep the
environment outside the repository). CARGO_TARGET_DIR is honoured.

Both sides use the same weights and the same tokens. The SmolLM2-135M-Instruct GGUF of the test assets (Q4_1,
fetched by scripts/fetch-test-assets.sh) is dequantised to f32 by transformers and written as a model directory
(safetensors, config.json, tokenizer.json) that umrank and transformers then both load. `cargo bench --bench
smollm2_memory` builds the reranker prompts (4 groups of 1 + 4, cut to 128 tokens by umrank's prompt builder),
writes their token ids, and measures umrank's training step with the default levers and with
`--no-shared-prefix --no-packing`, and a scoring pass with the adapter that step wrote. This script then measures
transformers + peft on those token ids: one LoRA step (r 16, alpha 32, dropout 0.05 on q, k, v, o, gate, up and
down; f32; the SFT loss umrank's train stage defaults to, summed over a group's documents and averaged over
groups; backward; gradient clipping at 1; AdamW at lr 1e-4 without weight decay), once as transformers runs it by
default and once with gradient checkpointing (its counterpart of umrank's layer recomputation), and a scoring pass
(`torch.no_grad`, the same adapter through PeftModel, batches of 8).

Every measurement runs in a process of its own: its figure is the kernel's high-water mark of the process's
resident memory (VmHWM) minus the resident memory before the model was built, as benches/train_memory.rs measures.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSET = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def status_bytes(field):
    """A /proc/self/status field (`VmRSS`, `VmHWM`) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"no {field} in /proc/self/status")


def gguf_path():
    """The test asset, fetched as the tests fetch it when it is not there yet."""
    assets = Path(os.environ.get("UMRANK_ASSETS") or Path.home() / ".cache/umrank/assets")
    if not (assets / ASSET / ".complete").is_file():
        subprocess.run(["bash", str(REPO / "scripts/fetch-test-assets.sh"), ASSET], check=True,
                       env={**os.environ, "UMRANK_ASSETS": str(assets)})
    return assets / ASSET / GGUF


def convert(gguf, out):
    """Dequantises the GGUF with transformers and writes an f32 model directory both sides load."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out.mkdir(parents=True, exist_ok=True)
    # The LM head is tied to the embeddings: the checkpoint stores the matrix once, as transformers saves it.
    tensors = {name: t.contiguous() for name, t in model.state_dict().items() if name != "lm_head.weight"}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = ["LlamaForCausalLM"]
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer.save_pretrained(str(out))


def yes_no_logits(model, rows, yes_no):
    """The yes and no logits at each prompt's last token: left-padded rows, positions counting real tokens, the LM
    head applied to the last position only."""
    import torch

    longest = max(len(r) for r in rows)
    # The padding is masked out: any id will do.
    ids = torch.tensor([[0] * (longest - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    logits = out.logits[:, -1, :].index_select(1, yes_no)
    return logits[:, 0], logits[:, 1]


def lora_training(model):
    """The model wrapped by peft with umrank's default LoRA (r 16, alpha 32, dropout 0.05 on the seven
    projections), in training mode, with its trainable parameters and their AdamW (lr 1e-4, no weight decay)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, bias="none")
    model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    return model, params, optimizer


def lora_step(model, params, optimizer, prompts, yes_no, phases=None, above=None):
    """One training step on the prompts file's groups; returns the loss and the gradient norm before clipping.
    With `phases` and `above`, the resident high-water mark is sampled after the forward and backward passes."""
    import torch

    groups, per_group = prompts["groups"], prompts["per_group"]
    z_yes, z_no = yes_no_logits(model, prompts["ids"], yes_no)
    # umrank's SFT loss (src/train/objective.rs): per document, cross-entropy over {no, yes} with the positive
    # (column 0) labelled yes; summed over a group's documents, averaged over groups.
    margin = (z_yes - z_no).reshape(groups, per_group)
    labels = torch.zeros(groups, per_group)
    labels[:, 0] = 1.0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(margin, labels, reduction="sum") / groups
    if phases is not None:
        phases["forward"] = above("VmHWM")
    loss.backward()
    if phases is not None:
        phases["backward"] = above("VmHWM")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def peft_child(model_dir, prompts_file, measurement, adapter):
    """One transformers + peft measurement in this process: `train`, `train-checkpointing` or `eval`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    prompts = json.loads(Path(prompts_file).read_text())
    yes_no = torch.tensor([prompts["yes"], prompts["no"]])
    baseline = status_bytes("VmRSS")

    def above(field):
        return status_bytes(field) - baseline

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    phases = {}

    if measurement == "eval":
        model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        phases["loaded"] = above("VmRSS")
        batch = prompts["eval_batch"]
        start = time.perf_counter()
        scores = []
        with torch.no_grad():
            for first in range(0, len(prompts["eval_ids"]), batch):
                z_yes, z_no = yes_no_logits(model, prompts["eval_ids"][first:first + batch], yes_no)
                scores.extend(torch.sigmoid(z_yes - z_no).tolist())
                phases.setdefault("first_batch", above("VmHWM"))
        seconds = time.perf_counter() - start
        extra = {"pairs": len(scores), "batch": batch}
    else:
        if measurement == "train-checkpointing":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model, params, optimizer = lora_training(model)
        phases["built"] = above("VmRSS")
        start = time.perf_counter()
        loss, grad_norm = lora_step(model, params, optimizer, prompts, yes_no, phases, above)
        seconds = time.perf_counter() - start
        phases["step"] = above("VmHWM")
        extra = {"tokens": sum(len(r) for r in prompts["ids"]), "loss": loss.item(),
                 "grad_norm": grad_norm.item()}
    print("RESULT " + json.dumps({
        "measurement": measurement, "measured_bytes": above("VmHWM"), "phases": phases, "seconds": seconds,
        "torch": torch.__version__, "attention": model.config._attn_implementation,
        "threads": torch.get_num_threads(), **extra}), flush=True)


def results(stdout):
    return {r["measurement"]: r for r in (json.loads(line[len("RESULT "):]) for line in stdout.splitlines()
                                          if line.startswith("RESULT "))}


def run(command, **kwargs):
    print("running:", " ".join(str(c) for c in command), flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{command[0]} failed with status {done.returncode}")
    for line in done.stdout.splitlines():
        if not line.startswith("RESULT "):
            print("  " + line)
    return done.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file (read by benches/all.py)")
    parser.add_argument("--eval-pairs", type=int, default=80, help="pairs each eval measurement scores")
    parser.add_argument("--convert", nargs=2, type=Path, metavar=("GGUF", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--peft-child", nargs=4, metavar=("MODEL", "PROMPTS", "MEASUREMENT", "ADAPTER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.convert:
        return convert(*args.convert)
    if args.peft_child:
        return peft_child(*args.peft_child)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir, prompts, adapter = scratch / "smollm2-135m-f32", scratch / "prompts.json", scratch / "adapter"
        print(f"dequantising {GGUF} to f32 with transformers", flush=True)
        # In a process of its own, so that this one holds no model while the measurements run.
        subprocess.run([sys.executable, __file__, "--convert", str(gguf_path()), str(model_dir)], check=True,
                       env={**os.environ, "TQDM_DISABLE": "1"})
        ours = results(run(["cargo", "bench", "--bench", "smollm2_memory", "--", "--model", str(model_dir),
                            "--prompts-out", str(prompts), "--adapter", str(adapter),
                            "--eval-pairs", str(args.eval_pairs)]))
        theirs = {}
        for measurement in ("train", "train-checkpointing", "eval"):
            theirs.update(results(run([sys.executable, __file__, "--peft-child", str(model_dir), str(prompts),
                                       measurement, str(adapter)])))
    mib = 1024 * 1024
    print()
    print(f"{'measurement':<44} {'peak MiB':>9} {'step/pass s':>12}  high-water mark by phase (MiB)")
    for name, row in [("umrank, default levers", ours["default"]),
                      ("umrank, --no-shared-prefix --no-packing", ours["plain"]),
                      ("transformers + peft", theirs["train"]),
                      ("transformers + peft, gradient checkpointing", theirs["train-checkpointing"]),
                      ("umrank eval (scoring) with the adapter", ours["eval"]),
                      ("transformers + peft eval (no_grad)", theirs["eval"])]:
        phases = ", ".join(f"{k} {v / mib:.0f}" for k, v in row["phases"].items())
        print(f"{name:<44} {row['measured_bytes'] / mib:>9.0f} {row['seconds']:>12.1f}  {phases}")
    plan = ours["eval"]["plan"]
    print(f"umrank eval's plan: weights {plan['weights'] / mib:.0f} MiB, adapter {plan['adapter'] / mib:.0f} MiB, "
          f"one batch {(plan['activations'] + plan['attention_workspace']) / mib:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"ours": ours, "transformers_peft": theirs}, indent=1))


if __name__ == "__main__":
    main()
