//! The properties of one `LoraLinear`.

use crate::common::{assert_close, max_abs_diff};
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Distribution, Tensor};
use burn_lora::{Error, LoraConfig, LoraInit, LoraLinear};

fn base(d_in: usize, d_out: usize, device: &Device) -> Linear {
    device.seed(1);
    LinearConfig::new(d_in, d_out).init(device)
}

/// A layer whose `B` is non-zero, as after some training.
fn trained(d_in: usize, d_out: usize, config: &LoraConfig, device: &Device) -> LoraLinear {
    let mut layer = LoraLinear::from_linear(base(d_in, d_out, device), config).unwrap();
    let b = Tensor::random([config.rank, d_out], Distribution::Normal(0.0, 0.5), device);
    layer.lora_b = Param::from_tensor(b);
    layer
}

fn input(tokens: usize, d_in: usize, device: &Device) -> Tensor<3> {
    Tensor::random([2, tokens, d_in], Distribution::Normal(0.0, 1.0), device)
}

#[test]
fn output_unchanged_at_init() {
    let device = Device::default();
    let linear = base(16, 12, &device);
    let x = input(5, 16, &device);
    let expected = linear.forward(x.clone());
    let layer = LoraLinear::from_linear(linear, &LoraConfig::new().with_rank(4)).unwrap();
    assert_eq!(layer.forward(x).into_data(), expected.into_data());
}

#[test]
fn b_starts_at_zero_and_a_within_kaiming_bound() {
    let device = Device::default();
    let layer = LoraLinear::from_linear(base(64, 32, &device), &LoraConfig::new()).unwrap();
    let b = layer.lora_b.val().abs().max().into_scalar::<f32>();
    assert_eq!(b, 0.0);
    let bound = 1.0 / 64f32.sqrt();
    let a = layer.lora_a.val().abs().max().into_scalar::<f32>();
    assert!(
        a <= bound && a > 0.5 * bound,
        "max |A| = {a}, bound {bound}"
    );
    assert_eq!(layer.lora_a.dims(), [64, 8]);
    assert_eq!(layer.lora_b.dims(), [8, 32]);
}

#[test]
fn gaussian_init_has_std_one_over_r() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(4).with_init(LoraInit::Gaussian);
    let layer = LoraLinear::from_linear(base(256, 256, &device), &config).unwrap();
    let std = layer.lora_a.val().var(0).mean().sqrt().into_scalar::<f32>();
    assert!(
        (std - 0.25).abs() < 0.03,
        "std of A = {std}, want 1/r = 0.25"
    );
}

#[test]
fn merged_equals_unmerged() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(4).with_alpha(16.0);
    let layer = trained(32, 24, &config, &device);
    let x = input(7, 32, &device);
    let unmerged = layer.forward(x.clone());
    let merged = layer.merge().forward(x);
    let diff = max_abs_diff(merged, unmerged);
    assert!(diff < 1e-5, "max |merged - unmerged| = {diff}");
}

#[test]
fn unmerge_restores_base_weight() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(4).with_alpha(16.0);
    let layer = trained(32, 24, &config, &device);
    let (a, b, w) = (layer.lora_a.val(), layer.lora_b.val(), layer.weight.val());
    let restored = LoraLinear::from_merged(layer.merge(), a.clone(), b.clone(), &config).unwrap();
    assert!(max_abs_diff(restored.weight.val(), w) < 1e-6);
    assert_eq!(restored.lora_a.val().into_data(), a.into_data());
    assert_eq!(restored.lora_b.val().into_data(), b.into_data());
}

#[test]
fn from_merged_checks_factor_shapes() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(4);
    let a = Tensor::zeros([32, 2], &device);
    let b = Tensor::zeros([2, 24], &device);
    let err = LoraLinear::from_merged(base(32, 24, &device), a, b, &config).unwrap_err();
    assert!(
        matches!(err, Error::ShapeMismatch { ref key, .. } if key == "lora_a"),
        "{err}"
    );
}

#[test]
fn disabled_adapter_gives_base_output() {
    let device = Device::default();
    let linear = base(16, 8, &device);
    let x = input(3, 16, &device);
    let expected = linear.forward(x.clone());
    let layer = LoraLinear::from_linear(linear, &LoraConfig::new().with_rank(2)).unwrap();
    let mut layer = layer.with_adapter_enabled(false);
    layer.lora_b = Param::from_tensor(Tensor::ones([2, 8], &device));
    assert_eq!(
        layer.forward(x.clone()).into_data(),
        expected.clone().into_data()
    );
    let enabled = layer.with_adapter_enabled(true).forward(x);
    assert!(max_abs_diff(enabled, expected) > 1e-3);
}

#[test]
fn dropout_is_off_in_valid() {
    let device = Device::default().autodiff();
    let config = LoraConfig::new().with_rank(4).with_dropout(0.5);
    let layer = trained(16, 8, &config, &device);
    let layer_for_training = layer.clone();
    let x = input(6, 16, &device);
    let mut without_dropout = layer.clone().valid();
    without_dropout.lora_dropout.prob = 0.0;
    let reference = without_dropout.forward(x.clone().inner()).into_data();

    let valid = layer.valid();
    assert_eq!(valid.forward(x.clone().inner()).into_data(), reference);

    let training = layer_for_training.forward(x).inner();
    let diff = max_abs_diff(training, Tensor::from_data(reference, &Device::default()));
    assert!(diff > 1e-3, "dropout had no effect while training");
}

#[test]
fn base_weight_and_bias_are_frozen() {
    let device = Device::default().autodiff();
    let layer = LoraLinear::from_linear(base(8, 8, &device), &LoraConfig::new()).unwrap();
    assert!(!layer.weight.is_require_grad());
    assert!(!layer.bias.as_ref().unwrap().is_require_grad());
    assert!(layer.lora_a.is_require_grad());
    assert!(layer.lora_b.is_require_grad());
}

#[test]
fn try_merge_refuses_non_finite_factors() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(2);
    let mut layer = LoraLinear::from_linear(base(8, 8, &device), &config).unwrap();
    layer.lora_b = Param::from_tensor(Tensor::full([2, 8], f32::NAN, &device));
    assert!(matches!(layer.try_merge(), Err(Error::NonFinite { .. })));
}

#[test]
fn every_bad_config_is_a_typed_error() {
    let device = Device::default();
    let wrap = |config: LoraConfig| LoraLinear::from_linear(base(8, 4, &device), &config);
    assert!(matches!(
        wrap(LoraConfig::new().with_rank(0)),
        Err(Error::ZeroRank)
    ));
    for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = wrap(LoraConfig::new().with_rank(2).with_alpha(alpha)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidAlpha(_)),
            "alpha {alpha}: {err}"
        );
    }
    for dropout in [1.0, 1.5, -0.1, f64::NAN] {
        let err = wrap(LoraConfig::new().with_rank(2).with_dropout(dropout)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidDropout(_)),
            "dropout {dropout}: {err}"
        );
    }
    let err = wrap(LoraConfig::new().with_rank(5)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::RankTooLarge {
                rank: 5,
                d_in: 8,
                d_out: 4,
                ..
            }
        ),
        "{err}"
    );
    let err = LoraConfig::new()
        .with_target_regex(Some("(".into()))
        .validate()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTargetRegex { .. }), "{err}");
}

#[test]
fn scaling_follows_rslora_switch() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(4).with_alpha(8.0);
    let plain = LoraLinear::from_linear(base(8, 8, &device), &config).unwrap();
    assert_eq!(plain.scaling(), 2.0);
    let config = config.with_use_rslora(true);
    let rs = LoraLinear::from_linear(base(8, 8, &device), &config).unwrap();
    assert_eq!(rs.scaling(), 4.0);
}

#[test]
fn delta_weight_is_scaled_a_times_b() {
    let device = Device::default();
    let config = LoraConfig::new().with_rank(1).with_alpha(3.0);
    let mut layer = LoraLinear::from_linear(base(2, 2, &device), &config).unwrap();
    layer.lora_a = Param::from_data([[1.0], [2.0]], &device);
    layer.lora_b = Param::from_data([[3.0, 4.0]], &device);
    let want = burn::tensor::TensorData::from([[9.0f32, 12.0], [18.0, 24.0]]);
    assert_close("delta", layer.delta_weight().into_data(), want);
}

/// One factored layer, as a model `apply_lora` and `quantize_linears` can take.
#[derive(Module, Debug)]
struct OneLayer {
    proj: burn_lora::nn::Linear,
}

/// On a Q8 base, the factored `Linear` computes what it computes on the same weights
/// dequantized, and the input and the adapter's factors get the same gradients. On flex
/// (the crate's `flex` feature) the base product then runs through `frozen`'s own backward
/// pass, which keeps the weight quantized; the input's gradient is the one it computes.
#[test]
fn a_q8_base_gives_the_dequantized_bases_values_and_gradients() {
    use burn::module::Quantizer;
    use burn::tensor::quantization::{Calibration, QuantScheme, QuantValue, ScaleDtype};

    let device = Device::flex().autodiff();
    device.seed(7);
    let float = OneLayer {
        proj: burn_lora::nn::LinearConfig::new(64, 96).init(&device),
    };
    let scheme = QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .per_block(&[32u8][..], ScaleDtype::F32);
    let mut quantizer = Quantizer::new(Calibration::MinMax, scheme);
    let quantized = burn_lora::quantize_linears(float, &mut quantizer, &[]).unwrap();
    assert!(matches!(
        quantized.proj.weight.val().dtype(),
        burn::tensor::DType::QFloat(_)
    ));
    let config = LoraConfig::new()
        .with_rank(4)
        .with_target_modules(vec!["proj".into()]);
    let quantized = burn_lora::apply_lora(quantized, &config).unwrap();
    // The float twin: the same model, its base weight dequantized; the adapter (the same
    // factors) stays attached, as Burn maps a reparameterized parameter's base alone.
    struct Dequantize;
    impl burn::module::ModuleMapper for Dequantize {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| match t.dtype() {
                burn::tensor::DType::QFloat(_) => t.dequantize(),
                _ => t,
            })
        }
    }
    let twin = quantized.clone().map(&mut Dequantize);
    assert_eq!(twin.proj.weight.val().dtype(), burn::tensor::DType::F32);
    assert!(twin.proj.adapter().is_some());

    // 2 · 12 rows: above the few-row (decode) path.
    let x0 = Tensor::<3>::random([2, 12, 64], Distribution::Normal(0.0, 1.0), &device);
    let upstream = Tensor::<3>::random([2, 12, 96], Distribution::Normal(0.0, 1.0), &device);
    let run = |model: &OneLayer| {
        let x = x0.clone().require_grad();
        let y = model.proj.forward(x.clone());
        let grads = (y.clone() * upstream.clone()).sum().backward();
        let lora = &model.proj.adapter().unwrap().loras()[0];
        (
            y,
            x.grad(&grads).unwrap(),
            lora.lora_b().grad(&grads).unwrap(),
        )
    };
    let (y_q, dx_q, db_q) = run(&quantized);
    let (y_f, dx_f, db_f) = run(&twin);
    assert_close("output", y_q.into_data(), y_f.into_data());
    assert_close("input's gradient", dx_q.into_data(), dx_f.into_data());
    assert_close("B's gradient", db_q.into_data(), db_f.into_data());
}
