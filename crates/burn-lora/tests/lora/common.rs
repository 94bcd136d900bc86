//! Shared test helpers: a tiny model with named linears (mirrored by
//! `scripts/peft_golden.py`'s `Tiny`), in a stock-`Linear` and a factored-`Linear` build,
//! and safetensors reading.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use safetensors::SafeTensors;

/// `head(tanh(query(x) + key(x) + value(x)))`, with `attn.{query,key,value}` and `head` of
/// the given linear type.
macro_rules! tiny {
    ($name:ident, $attn:ident, $linear:ty) => {
        #[derive(Module, Debug)]
        pub struct $attn {
            pub query: $linear,
            pub key: $linear,
            pub value: $linear,
        }

        #[derive(Module, Debug)]
        pub struct $name {
            pub attn: $attn,
            pub head: $linear,
        }

        impl $name {
            pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
                let attn = &self.attn;
                let h = attn.query.forward(x.clone())
                    + attn.key.forward(x.clone())
                    + attn.value.forward(x);
                self.head.forward(h.tanh())
            }
        }
    };
}

tiny!(Tiny, Attention, burn::nn::Linear);
tiny!(FastTiny, FastAttention, burn_lora::nn::Linear);

impl Tiny {
    /// A random model, all of whose parameters are initialised now, in a fixed order, so
    /// that a seed fixes every value (Burn initialises lazily, on first use).
    pub fn new(d: usize, classes: usize, device: &Device) -> Self {
        let linear = |d_in, d_out| burn::nn::LinearConfig::new(d_in, d_out).init(device);
        let model = Tiny {
            attn: Attention {
                query: linear(d, d),
                key: linear(d, d),
                value: linear(d, d),
            },
            head: linear(d, classes),
        };
        let _ = model.forward(Tensor::zeros([1, d], device));
        model
    }

    /// The base model from a PyTorch state dict (`[d_out, d_in]` weights).
    pub fn from_torch(file: &Path, device: &Device) -> Self {
        let bytes = std::fs::read(file).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let linear = |name: &str| linear_from_torch(&st, name, device);
        Tiny {
            attn: Attention {
                query: linear("attn.query"),
                key: linear("attn.key"),
                value: linear("attn.value"),
            },
            head: linear("head"),
        }
    }

    /// The same weights (same tensors, same ids) with the factored `burn_lora::nn::Linear`.
    pub fn fast(self) -> FastTiny {
        FastTiny {
            attn: FastAttention {
                query: self.attn.query.into(),
                key: self.attn.key.into(),
                value: self.attn.value.into(),
            },
            head: self.head.into(),
        }
    }
}

/// Gives every LoRA `B` (and, with `a`, every `A`) random values, as training would.
pub fn perturb<M: Module>(model: M, a: bool, device: &Device) -> M {
    struct Perturb<'a> {
        names: Vec<String>,
        a: bool,
        device: &'a Device,
    }
    impl ModuleMapper for Perturb<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.names.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.names.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let name = self.names.last().map(String::as_str).unwrap_or("");
            if name != "lora_b" && !(self.a && name == "lora_a") {
                return param;
            }
            let device = self.device;
            param.map(|t| {
                let grad = t.is_require_grad();
                let dtype = t.dtype();
                Tensor::<D>::random(t.shape(), Distribution::Normal(0.0, 0.5), device)
                    .cast(dtype)
                    .set_require_grad(grad)
            })
        }
    }
    model.map(&mut Perturb {
        names: Vec::new(),
        a,
        device,
    })
}

/// A tensor from a safetensors file, as Burn data.
pub fn read(st: &SafeTensors, key: &str) -> TensorData {
    let view = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("golden file lacks {key}"));
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    TensorData::new(values, view.shape().to_vec())
}

pub fn tensor<const D: usize>(st: &SafeTensors, key: &str, device: &Device) -> Tensor<D> {
    Tensor::from_data(read(st, key), device)
}

/// A Burn `Linear` from PyTorch's `{name}.weight` `[d_out, d_in]` and `{name}.bias`.
pub fn linear_from_torch(st: &SafeTensors, name: &str, device: &Device) -> burn::nn::Linear {
    let weight = tensor::<2>(st, &format!("{name}.weight"), device).transpose();
    let bias = st
        .tensor(&format!("{name}.bias"))
        .ok()
        .map(|_| Param::from_tensor(tensor::<1>(st, &format!("{name}.bias"), device)));
    burn::nn::Linear {
        weight: Param::from_tensor(weight),
        bias,
    }
}

/// Asserts `got` matches `want` element-wise within `1e-5` relative (floored at `1e-5`
/// absolute, for values near zero), naming the first mismatch.
#[track_caller]
pub fn assert_close(what: &str, got: TensorData, want: TensorData) {
    assert_close_within(what, got, want, 1e-5);
}

/// Asserts `|got - want| <= tol · max(|want|, 1)` elementwise.
#[track_caller]
pub fn assert_close_within(what: &str, got: TensorData, want: TensorData, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let got = got.convert::<f32>().try_to_vec::<f32>().unwrap();
    let want = want.convert::<f32>().try_to_vec::<f32>().unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let tol = tol * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (tol {tol:e})"
        );
    }
}

/// The largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// An empty directory `target/tmp/<group>/<name>` for one test's files.
pub fn scratch(group: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(group)
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `x` and `out` as `io.safetensors` for `scripts/peft_golden.py check`.
pub fn write_io(path: &Path, x: Tensor<2>, out: Tensor<2>) {
    let to_bytes = |t: Tensor<2>| -> (Vec<usize>, Vec<u8>) {
        let data = t.into_data();
        let bytes = data
            .try_to_vec::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        (data.shape().to_vec(), bytes)
    };
    let (x_shape, x_bytes) = to_bytes(x);
    let (out_shape, out_bytes) = to_bytes(out);
    let view = |shape, bytes| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytes).unwrap()
    };
    let io = vec![
        ("x", view(x_shape, &x_bytes)),
        ("out", view(out_shape, &out_bytes)),
    ];
    std::fs::write(path, safetensors::serialize(io, None).unwrap()).unwrap();
}

/// Sets the factors of every adapter named `adapter` (Burn layout): `A`, `B` and, given,
/// DoRA's magnitude.
pub struct SetFactors {
    pub adapter: String,
    pub a: Tensor<2>,
    pub b: Tensor<2>,
    pub magnitude: Option<Tensor<1>>,
    pub names: Vec<String>,
}

impl ModuleMapper for SetFactors {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.names.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.names.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let n = self.names.len();
        if n < 2 || self.names[n - 2] != self.adapter {
            return param;
        }
        let value: Tensor<D> = match self.names[n - 1].as_str() {
            "lora_a" => self.a.clone().reshape(param.lazy_shape()),
            "lora_b" => self.b.clone().reshape(param.lazy_shape()),
            "lora_magnitude" => match &self.magnitude {
                Some(m) => m.clone().reshape(param.lazy_shape()),
                None => return param,
            },
            _ => return param,
        };
        param.map(|t| {
            let grad = t.is_require_grad();
            value.detach().set_require_grad(grad)
        })
    }
}

/// One single-layer case of a golden file from `scripts/peft_golden.py` (its `cases`
/// metadata): the layer's shape of LoRA, and PEFT's scaling for it.
#[derive(serde::Deserialize)]
pub struct GoldenCase {
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    pub bias: bool,
    pub scaling: f64,
}

impl GoldenCase {
    /// The cases listed in the metadata of the golden file `bytes`.
    pub fn read_all(bytes: &[u8]) -> Vec<GoldenCase> {
        let (_, metadata) = SafeTensors::read_metadata(bytes).unwrap();
        serde_json::from_str(&metadata.metadata().as_ref().unwrap()["cases"]).unwrap()
    }

    /// Case `i`'s base linear (PyTorch `[out, in]` transposed) and its LoRA config.
    pub fn base(
        &self,
        st: &SafeTensors,
        i: usize,
        device: &Device,
    ) -> (burn::nn::Linear, burn_lora::LoraConfig) {
        let key = |name: &str| format!("case{i}.{name}");
        let linear = burn::nn::Linear {
            weight: Param::from_tensor(tensor::<2>(st, &key("weight"), device).transpose()),
            bias: self
                .bias
                .then(|| Param::from_tensor(tensor::<1>(st, &key("bias"), device))),
        };
        let config = burn_lora::LoraConfig::new()
            .with_rank(self.r)
            .with_alpha(self.alpha)
            .with_use_rslora(self.use_rslora);
        (linear, config)
    }
}
