//! Sessions run step after step with part of their inputs fed from the previous step's outputs: a
//! training step's weights and momentum buffers. On the host the carried tensors are plain arrays;
//! on a GPU (ort with CUDA) they stay in device memory between steps.

use super::{open_session, BackendKind, BackendOptions, Session};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// One carried tensor: the input that takes it, the output that updates it, and its value.
#[derive(Debug, Clone)]
pub struct Carried {
    pub input: String,
    pub output: String,
    /// The first value when opening; the latest while stepping.
    pub value: Tensor,
}

/// A model run step after step with carried state.
pub trait SteppingSession: Send {
    /// Runs one step; `inputs` are the inputs that are not carried. Returns the outputs that are
    /// not carried, in the order of [`SteppingSession::output_names`].
    fn step(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>>;

    /// The outputs [`SteppingSession::step`] returns.
    fn output_names(&self) -> &[String];

    /// The carried tensors' current values, copied to the host, by input name.
    fn state(&self) -> Result<Vec<(String, Tensor)>>;
}

/// Opens `model` for stepping with `carried` state, on the backend and device of `options`: ort
/// binds the state in its device memory (on the CPU too, so the CUDA path's code is the one the
/// CPU tests run); tract keeps it on the host.
pub fn open_stepping_session(model: &[u8], options: &BackendOptions, carried: Vec<Carried>) -> Result<Box<dyn SteppingSession>> {
    match options.kind {
        BackendKind::Ort => Ok(Box::new(super::ort::OrtDeviceStepping::open(model, options, carried)?)),
        BackendKind::Tract => Ok(Box::new(HostStepping::open(open_session(model, options)?, carried)?)),
    }
}

/// Stepping on any [`Session`], the state held on the host.
struct HostStepping {
    session: Box<dyn Session>,
    /// Carried tensors with the position of the output that updates each.
    carried: Vec<(Carried, usize)>,
    /// Positions and names of the outputs that are not carried.
    returned: Vec<usize>,
    returned_names: Vec<String>,
}

impl HostStepping {
    fn open(session: Box<dyn Session>, carried: Vec<Carried>) -> Result<HostStepping> {
        let outputs = session.output_names().to_vec();
        let carried = carried
            .into_iter()
            .map(|c| {
                let position = outputs
                    .iter()
                    .position(|o| *o == c.output)
                    .ok_or_else(|| Error::InvalidGraph(format!("the step model has no output '{}'", c.output)))?;
                Ok((c, position))
            })
            .collect::<Result<Vec<_>>>()?;
        let returned: Vec<usize> = (0..outputs.len()).filter(|p| carried.iter().all(|(_, q)| q != p)).collect();
        let returned_names = returned.iter().map(|&p| outputs[p].clone()).collect();
        Ok(HostStepping { session, carried, returned, returned_names })
    }
}

impl SteppingSession for HostStepping {
    fn step(&mut self, inputs: &[(&str, &Tensor)]) -> Result<Vec<Tensor>> {
        let mut feeds: Vec<(&str, &Tensor)> = inputs.to_vec();
        feeds.extend(self.carried.iter().map(|(c, _)| (c.input.as_str(), &c.value)));
        let mut outputs: Vec<Option<Tensor>> = self.session.run(&feeds)?.into_iter().map(Some).collect();
        for (carried, position) in &mut self.carried {
            carried.value = outputs[*position].take().ok_or_else(|| Error::Internal("an output carried twice".into()))?;
        }
        self.returned
            .iter()
            .map(|&p| outputs[p].take().ok_or_else(|| Error::Internal("an output returned twice".into())))
            .collect()
    }

    fn output_names(&self) -> &[String] {
        &self.returned_names
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.carried.iter().map(|(c, _)| (c.input.clone(), c.value.clone())).collect())
    }
}
