//! [`ToF32`]: every float parameter cast to float32, for checkpoints stored in half
//! precision.

use burn::module::{ModuleMapper, Param};
use burn::tensor::{DType, Tensor};

/// Casts every float parameter to `float32`: a checkpoint stored in `float16` or
/// `bfloat16` loads with its own dtype, and the models compute in `float32`.
pub struct ToF32;

impl ModuleMapper for ToF32 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match param.val().dtype() {
            DType::F32 => param,
            // On an autodiff device the cast is a recorded op, and a parameter must be a
            // leaf of the graph that still asks for gradients if the original did.
            _ => param.map(|t| {
                let grad = t.is_require_grad();
                t.cast(DType::F32).detach().set_require_grad(grad)
            }),
        }
    }
}
