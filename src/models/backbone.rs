//! The network under a reranker's LM head: a text decoder, or a Qwen2-VL / Qwen2.5-VL model whose vision tower
//! feeds the same kind of decoder. Scoring, training and release checks hold one of these and ask it for what
//! they need, so the choice between the two is made once, where the model is loaded.

use candle_core::{Device, Result, Tensor};

use super::qwen2_vl::{HiddenStates, PaddedBatch, Qwen2VlModel};
use crate::models::decoder::Decoder;
use crate::models::layers::attention::AttentionKernel;

#[derive(Debug)]
pub enum Backbone {
    Text(Box<Decoder>),
    Vl(Box<Qwen2VlModel>),
}

impl Backbone {
    /// The decoder, whose LM head turns hidden states into the judgement logits.
    pub fn decoder(&self) -> &Decoder {
        match self {
            Self::Text(decoder) => decoder,
            Self::Vl(model) => model.decoder(),
        }
    }

    /// The decoder, to attach or load adapters.
    pub fn decoder_mut(&mut self) -> &mut Decoder {
        match self {
            Self::Text(decoder) => decoder,
            Self::Vl(model) => model.decoder_mut(),
        }
    }

    /// The vision-language model, when there is a vision tower.
    pub fn vision_language(&self) -> Option<&Qwen2VlModel> {
        match self {
            Self::Vl(model) => Some(model),
            Self::Text(_) => None,
        }
    }

    pub fn device(&self) -> &Device {
        self.decoder().device()
    }

    /// Runs every attention of the model (decoder and vision tower) on `kernel`.
    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        match self {
            Self::Text(decoder) => decoder.set_attention_kernel(kernel),
            Self::Vl(model) => model.set_attention_kernel(kernel),
        }
    }
}

impl HiddenStates for Backbone {
    fn decoder(&self) -> &Decoder {
        Backbone::decoder(self)
    }

    fn hidden_states(&self, batch: &PaddedBatch, train: bool) -> Result<Tensor> {
        match self {
            Self::Text(decoder) => decoder.hidden_states(batch, train),
            Self::Vl(model) => model.hidden_states(batch, train),
        }
    }
}
