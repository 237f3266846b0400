//! The model layer: differentiable building blocks and the architectures built from them.
