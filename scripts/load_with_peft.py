#!/usr/bin/env python3
"""Load an umrank release with transformers + peft and score (instruction, query, document) pairs.

This is the outside check that a release is what it claims to be: a PEFT adapter that peft applies to the base
model (and, with --merged, weights that transformers loads without peft), giving the reranker score of
docs/method.md#yes-and-no-logits: p_yes = sigmoid(z_yes - z_no), the "yes" and "no" logits at the last position of

    <|im_start|>system
    Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>
    <|im_start|>user
    <Instruct>: {instruction}<Query>:{query image}{query text}
    <Document>:{document image}{document text}<|im_end|>
    <|im_start|>assistant

tests/it/peft_round_trip.rs runs it (with --pairs) in the environment scripts/python-test-env.sh makes, against
`umrank score` on the same pairs. Usage:

    python scripts/load_with_peft.py RELEASE_DIR --check            # the release's own check pair, compared
    python scripts/load_with_peft.py RELEASE_DIR --merged --check   # the same through merged/ without peft
    python scripts/load_with_peft.py RELEASE_DIR --instruction I --query Q --doc D [--doc-image PNG]
    python scripts/load_with_peft.py RELEASE_DIR [--merged] --pairs PAIRS.jsonl  # one JSON line per pair

A full release (a fully fine-tuned model, no adapter) loads with transformers alone. For an adapter release the
base model is read from --base, else from the path release.json records. Every adapter tensor must land on a
module of the model: an adapter that peft silently skips (a key-layout mismatch) is an error, not a score.
Tested with transformers 5.25, peft 0.21, torch 2.15 (CPU, float32).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')


def check_image(width, height):
    """The release check image; the formula is umrank's (src/release/check.rs, check_image)."""
    x = np.arange(width, dtype=np.int64)[None, :]
    y = np.arange(height, dtype=np.int64)[:, None]
    rgb = np.stack(np.broadcast_arrays((7 * x + 3 * y) % 256, (x * y) % 256, 255 - (5 * x) % 256), axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), mode="RGB")


def load_model(weights_dir, vision):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    return cls.from_pretrained(weights_dir, dtype=torch.float32).eval()


def apply_adapter(model, release):
    """The base with the release's adapter, after checking that every saved adapter tensor was loaded."""
    from peft import PeftModel
    peft_model = PeftModel.from_pretrained(model, release).eval()
    with safe_open(os.path.join(release, "adapter_model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    params = dict(peft_model.named_parameters())
    for key, value in saved.items():
        # peft stores `...q_proj.lora_A.weight` and names the live parameter `...q_proj.lora_A.default.weight`.
        stem, matrix, _ = key.rsplit(".", 2)
        suffix = stem.removeprefix("base_model.model.").split(".layers.", 1)[1] + f".{matrix}.default.weight"
        live = [p for name, p in params.items() if name.endswith(".layers." + suffix)]
        if len(live) != 1 or not torch.equal(live[0].detach(), value.to(live[0].dtype)):
            sys.exit(f"adapter tensor {key} was not applied by peft (matches: {len(live)})")
    return peft_model


def image_tokens(image_processor, image):
    """The image's patches, grid and its run of prompt tokens (vision start, one pad per merged patch, end)."""
    pixels = image_processor(images=[image], return_tensors="pt")
    grid = pixels["image_grid_thw"]
    merge = image_processor.merge_size
    pads = "<|image_pad|>" * int(grid.prod().item() // (merge * merge))
    return pixels["pixel_values"], grid, "<|vision_start|>" + pads + "<|vision_end|>"


def prompt_inputs(tokenizer, image_processor, pair, query_image, doc_image):
    """The reranker prompt of docs/method.md#prompt-layout for `pair`, with its images' pixel values."""
    texts, pixel_values, grids = {}, [], []
    for side, image in [("query", query_image), ("doc", doc_image)]:
        texts[side] = ""
        if image is not None:
            pixels, grid, texts[side] = image_tokens(image_processor, image)
            pixel_values.append(pixels)
            grids.append(grid)
    text = (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<Instruct>: {pair.get('instruction') or ''}"
            f"<Query>:{texts['query']}{pair.get('query_text') or ''}\n"
            f"<Document>:{texts['doc']}{pair.get('doc_text') or ''}<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    extra = {}
    if pixel_values:
        extra = {"pixel_values": torch.cat(pixel_values), "image_grid_thw": torch.cat(grids)}
        # transformers 5 places the 3-D (M-RoPE) positions of image tokens from this mask; without it the image
        # tokens get text positions and the scores are not the model's.
        image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        extra["mm_token_type_ids"] = (ids["input_ids"] == image_pad).long()
    return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], **extra}


def answer_id(tokenizer, word):
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        sys.exit(f"`{word}` is not a single token: {ids}")
    return ids[0]


def score(model, tokenizer, image_processor, pair, query_image, doc_image):
    """p_yes, z_yes and z_no of one pair: the "yes" and "no" logits at the prompt's last position."""
    inputs = prompt_inputs(tokenizer, image_processor, pair, query_image, doc_image)
    yes, no = answer_id(tokenizer, "yes"), answer_id(tokenizer, "no")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()
    z_yes, z_no = logits[yes].item(), logits[no].item()
    return {"p_yes": 1.0 / (1.0 + math.exp(z_no - z_yes)), "z_yes": z_yes, "z_no": z_no}


def read_pairs(path):
    """The pairs of a JSON-lines file in `umrank score --pairs` format, with their images (paths relative to it)."""
    def image(value):
        if not value:
            return None
        return Image.open(os.path.join(os.path.dirname(os.path.abspath(path)), value)).convert("RGB")

    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(row, image(row.get("query_image")), image(row.get("doc_image"))) for row in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("release", help="the release directory (with release.json)")
    parser.add_argument("--base", help="the base model directory [default: the path in release.json]")
    parser.add_argument("--merged", action="store_true", help="load merged/ with transformers alone")
    parser.add_argument("--check", action="store_true", help="score the release's check pair and compare")
    parser.add_argument("--pairs", help="score every pair of a JSON-lines file in `umrank score` format")
    parser.add_argument("--instruction", default="")
    parser.add_argument("--query", default="")
    parser.add_argument("--doc", default="")
    parser.add_argument("--doc-image", help="a document image file")
    args = parser.parse_args()

    with open(os.path.join(args.release, "release.json")) as f:
        manifest = json.load(f)
    full = manifest["kind"] == "full"
    if args.merged and not manifest["merged"]:
        sys.exit("the release has no merged weights")
    with open(os.path.join(args.release, "config.json")) as f:
        vision = "vision_config" in json.load(f)

    from transformers import AutoTokenizer
    files_dir = os.path.join(args.release, "merged") if args.merged else args.release
    tokenizer = AutoTokenizer.from_pretrained(files_dir)
    image_processor = None
    if vision:
        from transformers import Qwen2VLImageProcessor
        image_processor = Qwen2VLImageProcessor.from_pretrained(files_dir)

    if args.pairs:
        pairs = read_pairs(args.pairs)
    elif args.check:
        pair = manifest["check"]["pair"]
        pairs = [(pair, None, check_image(*pair["doc_image"]) if pair["doc_image"] else None)]
    else:
        pair = {"instruction": args.instruction, "query_text": args.query, "doc_text": args.doc}
        pairs = [(pair, None, Image.open(args.doc_image).convert("RGB") if args.doc_image else None)]

    if args.merged or full:
        model = load_model(files_dir, vision)
    else:
        base = args.base or manifest["base_model"]["path"]
        model = apply_adapter(load_model(base, vision), args.release)

    for pair, query_image, doc_image in pairs:
        result = score(model, tokenizer, image_processor, pair, query_image, doc_image)
        print(json.dumps(result))
    if args.check and not args.pairs:
        expected = manifest["check"]["expected"]
        diff = max(abs(result[k] - expected[k]) / max(1.0, abs(expected[k])) for k in result)
        print(json.dumps({"umrank": expected, "max_relative_difference": diff}))


if __name__ == "__main__":
    main()
