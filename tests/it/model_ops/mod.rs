//! Tests of the differentiable building blocks in `umrank::models`: forward passes against candle-nn's fused
//! inference kernels and against numpy ports of transformers (fixtures), gradients against finite differences.

mod activation;
mod attention;
pub(crate) mod common;
mod gradcheck;
mod norm;
mod packed;
mod reference;
mod rope;
mod softmax;
