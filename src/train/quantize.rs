//! `--quantize q8|q4`: the frozen base quantized before LoRA goes on (QLoRA).
//!
//! The weights of the base's linear layers are quantized with Burn's `Quantizer`,
//! symmetric, one f32 scale per block of 32 values (as bitsandbytes and GGUF cut 4-bit
//! weights; one per weight when 32 does not divide them all), MinMax calibration. Embeddings, norms, biases and the modules to save stay
//! float. Burn's CPU backends (flex, ndarray) store each quantized value in an i8, so Q4
//! takes Q8's memory there; CubeCL's GPU backends pack them.

use burn::module::{Module, Quantizer};
use burn::tensor::quantization::{Calibration, QuantScheme, QuantValue, ScaleDtype};
use burn_lora::quantize_linears;
use serde::Serialize;

use crate::Error;

/// How the frozen base is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseQuant {
    /// 8-bit symmetric.
    Q8,
    /// 4-bit symmetric.
    Q4,
}

impl BaseQuant {
    /// `q8` or `q4`, as `--quantize` takes them.
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for anything else.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "q8" => Ok(Self::Q8),
            "q4" => Ok(Self::Q4),
            other => Err(Error::Usage(format!("--quantize {other}: use q8 or q4"))),
        }
    }

    /// `q8` or `q4`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }

    /// Burn's scheme for it: symmetric, per block of 32 with f32 scales.
    pub fn scheme(self) -> QuantScheme {
        self.per_tensor().per_block([32], ScaleDtype::F32)
    }

    /// Symmetric, one scale per weight.
    fn per_tensor(self) -> QuantScheme {
        let value = match self {
            Self::Q8 => QuantValue::Q8S,
            Self::Q4 => QuantValue::Q4S,
        };
        QuantScheme::default().with_value(value)
    }

    /// `model` with its linears' weights quantized, except those inside `keep_float`: per
    /// block of 32, or, when 32 does not divide every weight (small models), one scale per
    /// weight.
    ///
    /// # Errors
    ///
    /// None in practice: the per-tensor scheme divides every weight.
    pub fn quantize<M: Module>(self, model: M, keep_float: &[String]) -> Result<M, Error> {
        let mut quantizer = Quantizer::new(Calibration::MinMax, self.scheme());
        match quantize_linears(model.clone(), &mut quantizer, keep_float) {
            Err(burn_lora::Error::QuantizeBlock { path, dims, .. }) => {
                println!(
                    "  --quantize {}: `{path}` {dims:?} is not a multiple of 32 wide: one scale per weight instead of per block",
                    self.name()
                );
                let mut quantizer = Quantizer::new(Calibration::MinMax, self.per_tensor());
                Ok(quantize_linears(model, &mut quantizer, keep_float)?)
            }
            other => Ok(other?),
        }
    }
}
