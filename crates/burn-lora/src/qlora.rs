//! QLoRA's first step: quantizing a base's linear weights before adapters go on.

use burn::module::{Module, ParamGroup, Quantizer};

use crate::Error;
use crate::apply::linears;
use crate::config::within_any;

/// `model` with the weight of every linear layer (`burn::nn::Linear` or
/// [`burn_lora::nn::Linear`](crate::nn::Linear)) quantized by `quantizer`, except the
/// linears inside a module `exclude` names (PEFT's matching: `head` excludes `head` and
/// `head.dense`). Biases, embeddings and norms stay float, as with PEFT's bitsandbytes
/// models. Pass the modules to save: a module that trains in full cannot be quantized.
///
/// A block scheme must divide every quantized weight's shape (Burn's quantizer would
/// panic); a weight it does not divide is [`Error::QuantizeBlock`], naming the layer, and
/// nothing is quantized.
///
/// Then [`apply_lora`](crate::apply_lora) attaches f32 adapters to the quantized weights:
///
/// ```
/// use burn::module::{Module, Quantizer};
/// use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig};
/// use burn::tensor::Device;
/// use burn::tensor::quantization::{Calibration, QuantValue};
/// use burn_lora::{LoraConfig, apply_lora, param_report, quantize_linears};
///
/// let device = Device::default();
/// let encoder: TransformerEncoder = TransformerEncoderConfig::new(16, 32, 2, 2).init(&device);
/// let scheme = device.settings().quantization.scheme.with_value(QuantValue::Q8S);
/// let encoder = quantize_linears(encoder, &mut Quantizer::new(Calibration::MinMax, scheme), &[]).unwrap();
/// let encoder = apply_lora(encoder, &LoraConfig::new().with_rank(4)).unwrap();
/// assert_eq!(param_report(&encoder).trainable, 2 * 2 * 4 * (16 + 16));
/// ```
///
/// # Errors
///
/// [`Error::QuantizeBlock`] for a weight the scheme's blocks do not divide.
pub fn quantize_linears<M: Module>(
    model: M,
    quantizer: &mut Quantizer,
    exclude: &[String],
) -> Result<M, Error> {
    let sites: Vec<_> = linears(&model)
        .into_iter()
        .filter(|site| !within_any(&site.path, exclude))
        .collect();
    if let Some(block) = quantizer.scheme.block_size() {
        let block = block.to_dim_vec(2);
        for site in &sites {
            let divides = site
                .dims()
                .iter()
                .zip(&block)
                .all(|(&dim, &extent)| dim.is_multiple_of(extent as usize));
            if !divides {
                return Err(Error::QuantizeBlock {
                    path: site.path.clone(),
                    dims: site.dims().to_vec(),
                    block: block.iter().map(|&b| b as usize).collect(),
                });
            }
        }
    }
    let ids = sites.into_iter().map(|site| site.weight_id).collect();
    quantizer.set_param_group(ParamGroup::from_ids(ids));
    Ok(model.quantize_weights(quantizer))
}
