//! `model::dropout`, in its own test binary: a Burn device's generator is shared by the
//! threads of a process, so a check that one seed gives one mask cannot run beside other
//! tests that draw random numbers (the lib's unit tests run in parallel threads).

use burn::nn::DropoutConfig;
use burn::tensor::{Device, Tensor};
use burn_lora_demo::model::dropout;

#[test]
fn keeps_the_right_fraction_scaled_and_only_in_training() {
    let device = Device::default().autodiff();
    device.seed(5);
    let module = DropoutConfig::new(0.25).init();
    let x = Tensor::<2>::ones([200, 500], &device);
    let y = dropout(&module, x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    assert!((kept - 0.75).abs() < 0.005, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    // Seeded by the device: the same mask again after the same seed, another mask next.
    device.seed(5);
    let again = dropout(&module, x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(y, again);
    let next = dropout(&module, x.clone())
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_ne!(y, next);
    // Not on an inference device.
    let plain = Tensor::<2>::ones([3, 4], &Device::default());
    let same = dropout(&module, plain.clone());
    assert_eq!(same.into_data(), plain.into_data());
}
