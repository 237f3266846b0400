//! Trainable additions to a frozen model: LoRA layers, and the PEFT format they are saved in and loaded from.

pub mod lora;
pub mod peft;
