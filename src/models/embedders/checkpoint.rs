//! A model directory on disk, and the fingerprint of everything read from it.
//!
//! Embeddings are cached under the model's fingerprint (docs/mining.md#embedding-store), so the fingerprint must change
//! whenever anything that changes an embedding does: weights, config, tokenizer, preprocessing config, or a setting the
//! embedder derived from them. Every file is read through [`ModelDir`], which hashes the exact bytes it parsed; a file
//! cannot influence the model without also entering the fingerprint.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::error::EmbedderError;
use crate::digest::sha256_hex;

/// Reads files of one model directory and remembers the digest of each.
#[derive(Debug)]
pub(crate) struct ModelDir {
    root: PathBuf,
    digests: BTreeMap<String, String>,
}

impl ModelDir {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            digests: BTreeMap::new(),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, EmbedderError> {
        let path = self.path(name);
        let bytes = std::fs::read(&path).map_err(|source| EmbedderError::Read { path, source })?;
        self.digests.insert(name.to_string(), sha256_hex(&bytes));
        Ok(bytes)
    }

    pub(crate) fn json<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, EmbedderError> {
        let bytes = self.read(name)?;
        serde_json::from_slice(&bytes).map_err(|source| EmbedderError::Json {
            path: self.path(name),
            source,
        })
    }

    /// The file parsed as `T` when it exists; `None` when it does not.
    pub(crate) fn optional_json<T: DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<Option<T>, EmbedderError> {
        if self.exists(name) {
            self.json(name).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn tokenizer(&mut self, name: &str) -> Result<Tokenizer, EmbedderError> {
        let bytes = self.read(name)?;
        Tokenizer::from_bytes(&bytes).map_err(|err| EmbedderError::Tokenizer {
            path: self.path(name),
            reason: err.to_string(),
        })
    }

    /// All tensors of a safetensors file, behind a builder that casts them to `dtype` on `device`.
    pub(crate) fn weights(
        &mut self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>, EmbedderError> {
        let bytes = self.read(name)?;
        let tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, device).map_err(|source| {
                EmbedderError::Weights {
                    path: self.path(name),
                    source,
                }
            })?;
        Ok(VarBuilder::from_tensors(tensors, dtype, device))
    }

    /// Wraps a model-construction error (a missing tensor, a shape the config does not predict) with the file the
    /// weights came from.
    pub(crate) fn weights_error(
        &self,
        name: &str,
    ) -> impl FnOnce(candle_core::Error) -> EmbedderError {
        let path = self.path(name);
        move |source| EmbedderError::Weights { path, source }
    }

    pub(crate) fn config_error(&self, name: &str, field: &str, reason: String) -> EmbedderError {
        EmbedderError::Config {
            path: self.path(name),
            field: field.to_string(),
            reason,
        }
    }

    /// sha256 over the family, the digest of every file read so far (by name), and the settings the embedder
    /// derived, as canonical JSON.
    pub(crate) fn fingerprint(&self, family: &str, settings: &impl Serialize) -> String {
        #[derive(Serialize)]
        struct Manifest<'a, S> {
            family: &'a str,
            files: &'a BTreeMap<String, String>,
            settings: &'a S,
        }
        let manifest = Manifest {
            family,
            files: &self.digests,
            settings,
        };
        let json = serde_json::to_vec(&manifest)
            .expect("a manifest of strings, string-keyed maps and numbers always serialises");
        sha256_hex(&json)
    }
}
