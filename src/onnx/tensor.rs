//! Conversions between ONNX `TensorProto`s and arrays.

use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};

use super::proto::{tensor_proto::DataType, TensorProto};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The shape of a tensor, checked to be non-negative and of a size that fits in memory arithmetic.
pub fn shape_of(tensor: &TensorProto) -> Result<Vec<usize>> {
    let shape = tensor
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(tensor, format!("negative dimension {d}"))))
        .collect::<Result<Vec<_>>>()?;
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(tensor, "element count overflows".into()))?;
    Ok(shape)
}

fn bad(tensor: &TensorProto, message: String) -> Error {
    Error::InvalidGraph(format!("tensor '{}': {message}", tensor.name.as_deref().unwrap_or("")))
}

fn element_count(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Decodes little-endian raw bytes into `count` elements of `N` bytes each.
fn from_raw<T, const N: usize>(tensor: &TensorProto, raw: &[u8], count: usize, decode: fn([u8; N]) -> T) -> Result<Vec<T>> {
    if raw.len() != count * N {
        return Err(bad(tensor, format!("raw_data holds {} bytes, the shape needs {}", raw.len(), count * N)));
    }
    Ok(raw.chunks_exact(N).map(|c| decode(c.try_into().unwrap_or([0; N]))).collect())
}

fn checked_len<T>(tensor: &TensorProto, values: Vec<T>, count: usize) -> Result<Vec<T>> {
    if values.len() != count {
        return Err(bad(tensor, format!("holds {} values, the shape needs {count}", values.len())));
    }
    Ok(values)
}

/// A float32 tensor as an array: a view of `float_data` when the data is there, else a decoded copy
/// of `raw_data` (which need not be aligned for f32).
pub fn to_f32(tensor: &TensorProto) -> Result<CowArray<'_, f32, IxDyn>> {
    if tensor.data_type != Some(DataType::Float as i32) {
        return Err(bad(tensor, format!("expected float32, found data type {}", tensor.data_type.unwrap_or(0))));
    }
    let shape = shape_of(tensor)?;
    let count = element_count(&shape);
    if let Some(raw) = &tensor.raw_data {
        let values = from_raw(tensor, raw, count, f32::from_le_bytes)?;
        return Ok(CowArray::from(ArrayD::from_shape_vec(shape, values).map_err(|e| bad(tensor, e.to_string()))?));
    }
    checked_len(tensor, tensor.float_data.iter().collect(), count)?;
    let view = ArrayViewD::from_shape(shape, &tensor.float_data).map_err(|e| bad(tensor, e.to_string()))?;
    Ok(CowArray::from(view))
}

/// Any supported tensor as a `Tensor` value (float32; int64, int32 and uint8 widened to int64; bool).
pub fn to_tensor(tensor: &TensorProto) -> Result<Tensor> {
    let shape = shape_of(tensor)?;
    let count = element_count(&shape);
    let raw = tensor.raw_data.as_deref();
    let data_type = tensor.data_type.unwrap_or(0);
    let array = |values: Vec<i64>| ArrayD::from_shape_vec(shape.clone(), values).map_err(|e| bad(tensor, e.to_string()));
    Ok(match DataType::try_from(data_type) {
        Ok(DataType::Float) => Tensor::F32(to_f32(tensor)?.into_owned()),
        Ok(DataType::Int64) => Tensor::I64(array(match raw {
            Some(raw) => from_raw(tensor, raw, count, i64::from_le_bytes)?,
            None => checked_len(tensor, tensor.int64_data.clone(), count)?,
        })?),
        Ok(DataType::Int32) => Tensor::I64(array(match raw {
            Some(raw) => from_raw(tensor, raw, count, |b: [u8; 4]| i64::from(i32::from_le_bytes(b)))?,
            None => checked_len(tensor, tensor.int32_data.iter().map(|&v| i64::from(v)).collect(), count)?,
        })?),
        Ok(DataType::Uint8) => Tensor::I64(array(match raw {
            Some(raw) => from_raw(tensor, raw, count, |b: [u8; 1]| i64::from(b[0]))?,
            None => checked_len(tensor, tensor.int32_data.iter().map(|&v| i64::from(v)).collect(), count)?,
        })?),
        Ok(DataType::Bool) => {
            let values = match raw {
                Some(raw) => from_raw(tensor, raw, count, |b: [u8; 1]| b[0] != 0)?,
                None => checked_len(tensor, tensor.int32_data.iter().map(|&v| v != 0).collect(), count)?,
            };
            Tensor::Bool(ArrayD::from_shape_vec(shape, values).map_err(|e| bad(tensor, e.to_string()))?)
        }
        _ => return Err(bad(tensor, format!("data type {data_type} is not supported here"))),
    })
}

/// A float32 initializer named `name`, stored as raw little-endian bytes.
pub fn from_f32(name: &str, array: &ArrayViewD<f32>) -> TensorProto {
    raw_tensor(name, DataType::Float, array.shape(), array.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int64 initializer named `name`.
pub fn from_i64(name: &str, shape: &[usize], values: &[i64]) -> TensorProto {
    raw_tensor(name, DataType::Int64, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A bool initializer named `name`.
pub fn from_bool(name: &str, shape: &[usize], values: &[bool]) -> TensorProto {
    raw_tensor(name, DataType::Bool, shape, values.iter().map(|&v| u8::from(v)).collect())
}

fn raw_tensor(name: &str, data_type: DataType, shape: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        data_type: Some(data_type as i32),
        dims: shape.iter().map(|&d| d as i64).collect(),
        raw_data: Some(raw),
        ..Default::default()
    }
}

/// Number of elements a tensor holds according to its shape (0 for malformed shapes).
pub fn element_count_of(tensor: &TensorProto) -> usize {
    shape_of(tensor).map(|s| element_count(&s)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_round_trip_through_raw_and_float_data() {
        let array = ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f32 - 2.5);
        let proto = from_f32("w", &array.view());
        assert_eq!(to_f32(&proto).unwrap().into_owned(), array);
        let typed = TensorProto {
            raw_data: None,
            float_data: array.iter().copied().collect(),
            ..proto
        };
        assert!(matches!(to_f32(&typed).unwrap(), CowArray { .. }));
        assert_eq!(to_tensor(&typed).unwrap(), Tensor::F32(array));
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let mut proto = from_i64("s", &[4], &[1, 2, 3, 4]);
        proto.dims = vec![5];
        assert!(to_tensor(&proto).is_err());
        proto.dims = vec![-1];
        assert!(to_tensor(&proto).is_err());
        proto.dims = vec![i64::MAX, i64::MAX];
        assert!(to_tensor(&proto).is_err());
    }
}
