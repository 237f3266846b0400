"""Writes the Qwen2.5-VL-3B-Instruct architecture (config only, no weights) for the GPU benchmarks.

The values are the released Qwen/Qwen2.5-VL-3B-Instruct config's; transformers writes the file so that both
transformers and umrank read the same architecture. Run with transformers 5.x:
    python benches/gpu/make_config.py
"""
from pathlib import Path

from transformers import Qwen2_5_VLConfig

text = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
    num_attention_heads=16, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000,
    rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    bos_token_id=151643, eos_token_id=151645,
)
vision = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, out_hidden_size=2048,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
)
config = Qwen2_5_VLConfig(
    text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
    vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=True,
)
out = Path(__file__).parent / "qwen2_5_vl_3b"
out.mkdir(exist_ok=True)
config.to_json_file(out / "config.json")
print(out / "config.json")
