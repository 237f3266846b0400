"""The PyTorch stack's figures for the workloads of examples/gpu_bench.rs, measured in the same script run.

Same config file, batch, image size and prompt length as the Rust benchmark: transformers' Qwen2.5-VL built from
the config alone (random weights, bf16), peft LoRA on the decoder's seven projections (the vision tower frozen),
one group of prompts that each hold one image, the SFT loss on the yes/no logits of the last position,
forward + backward + AdamW; with --recompute, transformers' gradient checkpointing of every decoder layer (the
Rust side's --recompute). Prints one JSON line per figure, as the Rust side does.

    python benches/gpu/torch_baseline.py train --config benches/gpu/qwen2_5_vl_3b/config.json
    python benches/gpu/torch_baseline.py score --config benches/gpu/qwen2_5_vl_3b/config.json --batch 32

Run with torch 2.11 + transformers 5.x + peft on the GPU machine (the figures of
docs/performance.md#gpu-reference-figures came from that stack).
"""
import argparse
import json
import time

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

DECODER_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def build(args):
    config = Qwen2_5_VLConfig.from_json_file(args.config)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    side = args.image_side // config.vision_config.patch_size
    patches = side * side
    merged = patches // config.vision_config.spatial_merge_size**2
    words = [100 + (i * 37 % 5000) for i in range(args.text_tokens)]
    head = args.text_tokens // 2
    prompt = words[:head] + [config.vision_start_token_id] + [config.image_token_id] * merged
    prompt += [config.vision_start_token_id + 1] + words[head:]
    ids = torch.tensor([prompt] * args.batch, device=args.device)
    patch_dim = 3 * config.vision_config.temporal_patch_size * config.vision_config.patch_size**2
    pixels = torch.randn(args.batch * patches, patch_dim, device=args.device, dtype=dtype)
    grid = torch.tensor([[1, side, side]] * args.batch, device=args.device)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels, image_grid_thw=grid)
    print(json.dumps({"event": "built", "tokens_per_seq": len(prompt), "batch": args.batch}), flush=True)
    return model, inputs, len(prompt) * args.batch


def yes_no_logits(model, inputs):
    vocab = model.config.text_config.vocab_size
    logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
    return logits[:, min(9693, vocab - 1)].float(), logits[:, min(2152, vocab - 2)].float()


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train(args):
    from peft import LoraConfig, get_peft_model

    model, inputs, tokens = build(args)
    lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                      target_modules=DECODER_TARGETS)
    model = get_peft_model(model, lora)
    if args.recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    signs = -torch.ones(args.batch, device=args.device)
    signs[0] = 1.0
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.steps + 1):
        sync(args.device)
        start = time.perf_counter()
        z_yes, z_no = yes_no_logits(model, inputs)
        loss = torch.nn.functional.softplus(-(z_yes - z_no) * signs).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        seconds = time.perf_counter() - start
        print(json.dumps({"event": "step", "step": step, "seconds": seconds, "loss": loss.item()}), flush=True)
        if step > 0:
            times.append(seconds)
    mean = sum(times) / len(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    print(json.dumps({"bench": "train_lora_torch", "batch": args.batch, "recompute": args.recompute,
                      "tokens_per_seq": tokens // args.batch, "step_seconds": mean,
                      "seq_per_s": args.batch / mean, "tokens_per_s": tokens / mean, "peak_gib": peak}), flush=True)


@torch.no_grad()
def score(args):
    model, inputs, _ = build(args)
    model.eval()
    times = []
    for repeat in range(args.steps + 1):
        sync(args.device)
        start = time.perf_counter()
        z_yes, z_no = yes_no_logits(model, inputs)
        torch.sigmoid(z_yes - z_no).tolist()
        seconds = time.perf_counter() - start
        if repeat > 0:
            times.append(seconds)
    mean = sum(times) / len(times)
    print(json.dumps({"bench": "score_torch", "batch": args.batch, "batch_seconds": mean,
                      "pairs_per_s": args.batch / mean}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "score"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--batch", type=int, default=17)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--text-tokens", type=int, default=63)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--recompute", action="store_true", help="gradient checkpointing of every decoder layer")
    args = parser.parse_args()
    {"train": train, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
