//! onnx-deeppatch: DeepPatch (Wei et al., TOSEM 2023) for deployed image classifiers given as ONNX.
//!
//! The data flow is one-way: load (`onnx`) → analyse (`analysis`) → evaluate (`eval`) on a
//! `backend`, with `data` providing images and corruptions and `report` rendering results.

pub mod analysis;
pub mod assess;
pub mod autodiff;
pub mod backend;
pub mod bench;
pub mod calibrate;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod fuzz;
pub mod inspect;
pub mod isolate;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod tensor;
pub mod train;
pub mod units;

#[cfg(test)]
mod test_support;

pub use error::{Error, Result};
pub use tensor::Tensor;
