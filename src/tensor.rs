//! The value type exchanged with backends: a dense n-dimensional array of one of the element types
//! that DeepPatch graphs use.

use ndarray::{ArrayD, Axis, Slice};

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

    /// Row `row` of the first axis, keeping that axis (length 1).
    pub fn row(&self, row: usize) -> Result<Tensor> {
        fn take<T: Clone>(a: &ArrayD<T>, row: usize) -> Result<ArrayD<T>> {
            if a.ndim() == 0 || row >= a.len_of(Axis(0)) {
                return Err(Error::Internal(format!("row {row} of a tensor of shape {:?}", a.shape())));
            }
            Ok(a.slice_axis(Axis(0), Slice::from(row..=row)).to_owned())
        }
        Ok(match self {
            Tensor::F32(a) => Tensor::F32(take(a, row)?),
            Tensor::I64(a) => Tensor::I64(take(a, row)?),
            Tensor::Bool(a) => Tensor::Bool(take(a, row)?),
        })
    }

    /// Tensors of one element type joined along their first axis.
    pub fn concatenate(parts: &[Tensor]) -> Result<Tensor> {
        fn join<'t, T: Clone + 't>(parts: impl Iterator<Item = Result<&'t ArrayD<T>>>) -> Result<ArrayD<T>> {
            let arrays: Vec<_> = parts.map(|p| p.map(|a| a.view())).collect::<Result<_>>()?;
            ndarray::concatenate(Axis(0), &arrays).map_err(|e| Error::Internal(format!("cannot join tensors along their first axis: {e}")))
        }
        Ok(match parts.first() {
            Some(Tensor::F32(_)) => Tensor::F32(join(parts.iter().map(Tensor::as_f32))?),
            Some(Tensor::I64(_)) => Tensor::I64(join(parts.iter().map(Tensor::as_i64))?),
            Some(Tensor::Bool(_)) => Tensor::Bool(join(parts.iter().map(Tensor::as_bool))?),
            None => return Err(Error::Internal("nothing to join".into())),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_taken_and_joined_give_the_tensor_back() {
        let tensor = Tensor::F32(ndarray::Array::from_shape_fn((3, 2), |(i, j)| (10 * i + j) as f32).into_dyn());
        let rows: Vec<Tensor> = (0..3).map(|r| tensor.row(r).unwrap()).collect();
        assert_eq!(rows[1], Tensor::F32(ndarray::arr2(&[[10.0, 11.0]]).into_dyn()));
        assert_eq!(Tensor::concatenate(&rows).unwrap(), tensor);
        assert!(tensor.row(3).is_err());
        assert!(Tensor::concatenate(&[rows[0].clone(), Tensor::I64(ndarray::arr1(&[1]).into_dyn())]).is_err());
    }
}
