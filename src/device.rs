//! `--device`: which of Burn's backends and devices the examples compute on.
//!
//! `auto | flex | ndarray | wgpu[:N|:cpu] | vulkan[:N] | cuda[:N]`, or several separated by
//! commas (`wgpu:0,wgpu:1`) to train across them with burn-train's `MultiDevice`. `auto` is Burn's
//! `Device::default()`, which honours `BURN_DEVICE` and is a GPU as soon as a GPU feature is
//! compiled in. A backend whose Cargo feature this binary was built without is an error that
//! names the feature and the command that builds it.

use burn::tensor::Device;

use crate::Error;

/// The devices `spec` names, in order: one for `auto` or a single device, several for a
/// comma-separated list. `example` names the example in the error for a missing feature.
///
/// # Errors
///
/// [`Error::Usage`] for an unknown device, a bad index, or a backend whose feature was not
/// compiled in (naming the feature and the exact `cargo run --features …` command).
pub fn parse_devices(spec: &str, example: &str) -> Result<Vec<Device>, Error> {
    let devices = spec
        .split(',')
        .map(|one| parse_device(one.trim(), example))
        .collect::<Result<Vec<_>, _>>()?;
    if devices.is_empty() {
        return Err(Error::Usage("--device names no device".into()));
    }
    Ok(devices)
}

/// The one device `spec` names, for the examples that compute on one.
///
/// # Errors
///
/// As [`parse_devices`], and a list of several.
pub fn parse_one_device(spec: &str, example: &str) -> Result<Device, Error> {
    let mut devices = parse_devices(spec, example)?;
    match devices.len() {
        1 => Ok(devices.remove(0)),
        n => Err(Error::Usage(format!(
            "--device {spec}: {example} runs on one device, not {n} (data parallelism across devices is the sentiment job's)"
        ))),
    }
}

/// One device of a `--device` list.
fn parse_device(spec: &str, example: &str) -> Result<Device, Error> {
    let (backend, index) = match spec.split_once(':') {
        Some((backend, index)) => (backend, Some(index)),
        None => (spec, None),
    };
    let number = |what: &str| -> Result<usize, Error> {
        match index {
            None => Ok(0),
            Some(n) => n.parse().map_err(|_| {
                Error::Usage(format!(
                    "--device {spec}: `{n}` is not a {what} index (a number, as in `{backend}:0`)"
                ))
            }),
        }
    };
    let plain = |device: Device| match index {
        None => Ok(device),
        Some(_) => Err(Error::Usage(format!(
            "--device {spec}: `{backend}` takes no index (it has one device)"
        ))),
    };
    match backend {
        "auto" => plain(Device::default()),
        "flex" => flex(example).and_then(plain),
        "ndarray" => ndarray(example).and_then(plain),
        "wgpu" => wgpu(index == Some("cpu"), number, example),
        "vulkan" => vulkan(number("Vulkan")?, example),
        "cuda" => cuda(number("CUDA")?, example),
        other => Err(Error::Usage(format!(
            "--device: unknown device `{other}`; use auto, flex, ndarray, wgpu[:N|:cpu], vulkan[:N] or cuda[:N]"
        ))),
    }
}

/// The one-paragraph error for a backend this binary was built without.
pub fn missing_feature(feature: &str, device: &str, example: &str) -> Error {
    Error::Usage(format!(
        "--device {device} needs the `{feature}` feature, and this binary was built without it. Build and run with it: cargo run --release --features {feature} --example {example} -- --device {device}{}",
        match feature {
            "cuda" =>
                " (the cuda feature downloads an LLVM bundle while building, so it needs the network)",
            _ => "",
        }
    ))
}

fn flex(example: &str) -> Result<Device, Error> {
    #[cfg(feature = "flex")]
    {
        let _ = example;
        Ok(Device::flex())
    }
    #[cfg(not(feature = "flex"))]
    Err(missing_feature("flex", "flex", example))
}

fn ndarray(example: &str) -> Result<Device, Error> {
    #[cfg(feature = "ndarray")]
    {
        let _ = example;
        // Deprecated in Burn 0.22 in favour of flex, and still a backend users pick.
        #[allow(deprecated)]
        Ok(Device::ndarray())
    }
    #[cfg(not(feature = "ndarray"))]
    Err(missing_feature("ndarray", "ndarray", example))
}

fn wgpu(
    cpu: bool,
    number: impl Fn(&str) -> Result<usize, Error>,
    example: &str,
) -> Result<Device, Error> {
    #[cfg(feature = "wgpu")]
    {
        use burn::tensor::DeviceKind;
        let _ = example;
        let kind = match cpu {
            true => DeviceKind::Cpu,
            false => match number("wgpu") {
                Ok(0) => DeviceKind::DefaultDevice,
                Ok(n) => DeviceKind::DiscreteGpu(n),
                Err(e) => return Err(e),
            },
        };
        Ok(Device::wgpu(kind))
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let device = match cpu {
            true => "wgpu:cpu".to_string(),
            false => match number("wgpu")? {
                0 => "wgpu".to_string(),
                n => format!("wgpu:{n}"),
            },
        };
        Err(missing_feature("wgpu", &device, example))
    }
}

fn vulkan(index: usize, example: &str) -> Result<Device, Error> {
    #[cfg(feature = "vulkan")]
    {
        use burn::tensor::DeviceKind;
        let _ = example;
        Ok(Device::vulkan(match index {
            0 => DeviceKind::DefaultDevice,
            n => DeviceKind::DiscreteGpu(n),
        }))
    }
    #[cfg(not(feature = "vulkan"))]
    Err(missing_feature(
        "vulkan",
        &format!("vulkan:{index}"),
        example,
    ))
}

fn cuda(index: usize, example: &str) -> Result<Device, Error> {
    #[cfg(feature = "cuda")]
    {
        let _ = example;
        Ok(Device::cuda(index))
    }
    #[cfg(not(feature = "cuda"))]
    Err(missing_feature("cuda", &format!("cuda:{index}"), example))
}

/// Whether `device` runs on this machine's CPU cores (Burn's `flex` and `ndarray`), where
/// data-parallel replicas on threads pay off.
pub fn is_cpu(device: &Device) -> bool {
    burn_lora::dropout::is_cpu_device(device)
}

/// How a device is recorded in `details.json` and the job's table: Burn's own name for it.
pub fn describe(device: &Device) -> String {
    let name = format!("{device:?}");
    name.strip_prefix("Device<")
        .and_then(|n| n.strip_suffix('>'))
        .unwrap_or(&name)
        .to_string()
}

/// The backend's name: `Flex`, `NdArray`, `Cube` (wgpu, Vulkan, CUDA, ...), with autodiff
/// or without.
pub fn backend(device: &Device) -> String {
    let name = describe(&device.clone().without_autodiff());
    name.split(['(', ' ', '{']).next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_and_cpu_backends_parse() {
        assert_eq!(parse_devices("auto", "x").unwrap().len(), 1);
        let two = parse_devices("flex,flex", "x").unwrap();
        assert_eq!(two.len(), 2);
        assert!(is_cpu(&two[0]));
        assert!(describe(&two[0]).contains("Flex"), "{}", describe(&two[0]));
        assert_eq!(backend(&two[0]), "Flex");
        assert_eq!(backend(&two[0].clone().autodiff()), "Flex");
    }

    #[test]
    fn bad_devices_are_usage_errors() {
        for (spec, needle) in [
            ("tpu", "unknown device `tpu`"),
            ("flex:1", "takes no index"),
            ("cuda:x", "not a CUDA index"),
        ] {
            let err = parse_devices(spec, "sentiment").unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn a_backend_not_compiled_in_names_its_feature_and_command() {
        let err = parse_devices("wgpu:cpu", "sentiment")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`wgpu` feature"), "{err}");
        assert!(
            err.contains(
                "cargo run --release --features wgpu --example sentiment -- --device wgpu:cpu"
            ),
            "{err}"
        );
        let err = parse_devices("cuda:1", "predict").unwrap_err().to_string();
        assert!(
            err.contains("--features cuda --example predict -- --device cuda:1"),
            "{err}"
        );
        assert!(err.contains("network"), "{err}");
    }
}
