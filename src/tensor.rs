//! The value type exchanged with backends: a dense n-dimensional array of one of the element types
//! that DeepPatch graphs use.

use ndarray::ArrayD;

use crate::error::{Error, Result};

/// A dense tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

impl Tensor {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Tensor::F32(a) => a.shape(),
            Tensor::I64(a) => a.shape(),
            Tensor::Bool(a) => a.shape(),
        }
    }

    /// The element type as ONNX names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Tensor::F32(_) => "float32",
            Tensor::I64(_) => "int64",
            Tensor::Bool(_) => "bool",
        }
    }

    /// Borrow as float32, or say what it is instead.
    pub fn as_f32(&self) -> Result<&ArrayD<f32>> {
        match self {
            Tensor::F32(a) => Ok(a),
            other => Err(Error::Internal(format!("expected a float32 tensor, got {}", other.type_name()))),
        }
    }

    /// Take as float32, or say what it is instead.
    pub fn into_f32(self) -> Result<ArrayD<f32>> {
        match self {
            Tensor::F32(a) => Ok(a),
            other => Err(Error::Internal(format!("expected a float32 tensor, got {}", other.type_name()))),
        }
    }

    /// Borrow as int64, or say what it is instead.
    pub fn as_i64(&self) -> Result<&ArrayD<i64>> {
        match self {
            Tensor::I64(a) => Ok(a),
            other => Err(Error::Internal(format!("expected an int64 tensor, got {}", other.type_name()))),
        }
    }

    /// Borrow as bool, or say what it is instead.
    pub fn as_bool(&self) -> Result<&ArrayD<bool>> {
        match self {
            Tensor::Bool(a) => Ok(a),
            other => Err(Error::Internal(format!("expected a bool tensor, got {}", other.type_name()))),
        }
    }
}

impl From<ArrayD<f32>> for Tensor {
    fn from(a: ArrayD<f32>) -> Self {
        Tensor::F32(a)
    }
}

impl From<ArrayD<i64>> for Tensor {
    fn from(a: ArrayD<i64>) -> Self {
        Tensor::I64(a)
    }
}

impl From<ArrayD<bool>> for Tensor {
    fn from(a: ArrayD<bool>) -> Self {
        Tensor::Bool(a)
    }
}
