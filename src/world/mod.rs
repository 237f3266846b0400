//! The demo world: a deterministic generator of a small multimodal retrieval dataset in M-BEIR format.
