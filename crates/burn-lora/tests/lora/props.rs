//! Property tests (issue "The library at its edges", item 7): random module trees (nested
//! structs, `Vec`, `Option`, an enum), random target lists, f32/f16/bf16 bases; for each,
//! `param_report`'s arithmetic, the save/load round trip, merge against unmerged, unmerge
//! against the base, and a mixed batch against separate runs.
//!
//! proptest draws the trees' shapes and targets; the weights come from the device's
//! generator, and the properties hold for any weights. 256 cases per property by default;
//! `PROPTEST_CASES=5000 cargo test -p burn-lora --test lora props` runs more (7 s here).

use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Distribution, Tensor};
use burn_lora::nn::Linear;
use burn_lora::{
    BASE_ADAPTER, LoraConfig, add_adapter, apply_lora, linear_paths, load_adapter, merge_adapters,
    merge_lora, param_report, save_adapter, set_active_adapters, set_adapters_enabled,
    unmerge_adapters, with_adapter_names,
};
use proptest::prelude::*;

use crate::common::{perturb, scratch};

#[derive(Module, Debug)]
struct Pair {
    a: Linear,
    b: Option<Linear>,
}

#[derive(Module, Debug)]
enum Block {
    Plain(Linear),
    Pair(Pair),
}

#[derive(Module, Debug)]
struct Tree {
    blocks: Vec<Block>,
    extra: Option<Linear>,
    head: Linear,
}

impl Tree {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for block in &self.blocks {
            h = match block {
                Block::Plain(l) => l.forward(h).tanh(),
                Block::Pair(p) => {
                    let y = p.a.forward(h);
                    match &p.b {
                        Some(b) => b.forward(y).tanh(),
                        None => y.tanh(),
                    }
                }
            };
        }
        if let Some(extra) = &self.extra {
            h = h.clone() + extra.forward(h);
        }
        self.head.forward(h)
    }
}

/// The shape of a tree, the adapter's rank and targets, the dtype and the batch.
#[derive(Debug, Clone)]
struct Spec {
    d: usize,
    /// Each block: `None` a plain linear, `Some(has_b)` a pair.
    blocks: Vec<Option<bool>>,
    extra: bool,
    classes: usize,
    rank: usize,
    dtype: DType,
    /// Bit `i` selects the tree's `i`-th linear (the first when none is set).
    targets: u64,
    rows: usize,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        2usize..7,
        proptest::collection::vec(proptest::option::of(any::<bool>()), 1..4),
        any::<bool>(),
        2usize..4,
        1usize..3,
        prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)],
        any::<u64>(),
        1usize..5,
    )
        .prop_map(
            |(d, blocks, extra, classes, rank, dtype, targets, rows)| Spec {
                d,
                blocks,
                extra,
                classes,
                rank,
                dtype,
                targets,
                rows,
            },
        )
}

impl Spec {
    fn tree(&self, device: &Device) -> Tree {
        let linear = |d_in, d_out| -> Linear {
            burn::nn::LinearConfig::new(d_in, d_out).init(device).into()
        };
        let d = self.d;
        let tree = Tree {
            blocks: self
                .blocks
                .iter()
                .map(|block| match block {
                    None => Block::Plain(linear(d, d)),
                    Some(has_b) => Block::Pair(Pair {
                        a: linear(d, d),
                        b: has_b.then(|| linear(d, d)),
                    }),
                })
                .collect(),
            extra: self.extra.then(|| linear(d, d)),
            head: linear(d, self.classes),
        };
        tree.map(&mut Cast(self.dtype))
    }

    /// The selected linears' paths and their `[d_in, d_out]`.
    fn targets(&self, tree: &Tree) -> Vec<(String, usize, usize)> {
        let paths = linear_paths(tree);
        let dims = |path: &str| match path {
            "head" => (self.d, self.classes),
            _ => (self.d, self.d),
        };
        let chosen: Vec<String> = paths
            .iter()
            .enumerate()
            .filter(|(i, _)| self.targets >> (i % 64) & 1 == 1)
            .map(|(_, p)| p.clone())
            .collect();
        let chosen = match chosen.is_empty() {
            true => vec![paths[0].clone()],
            false => chosen,
        };
        chosen
            .into_iter()
            .map(|p| {
                let (i, o) = dims(&p);
                (p, i, o)
            })
            .collect()
    }

    fn config(&self, targets: &[(String, usize, usize)]) -> LoraConfig {
        LoraConfig::new()
            .with_rank(self.rank)
            .with_alpha(2.0 * self.rank as f64)
            .with_target_modules(targets.iter().map(|t| t.0.clone()).collect())
    }

    fn x(&self, device: &Device) -> Tensor<2> {
        Tensor::<2>::random([self.rows, self.d], Distribution::Normal(0.0, 1.0), device)
            .cast(self.dtype)
    }

    /// How close two outputs of this dtype must be, relative to the larger magnitude.
    fn tolerance(&self) -> f32 {
        match self.dtype {
            DType::F16 => 2e-2,
            DType::BF16 => 8e-2,
            _ => 1e-4,
        }
    }
}

/// Casts every float parameter to `dtype`.
struct Cast(DType);

impl burn::module::ModuleMapper for Cast {
    fn map_float<const N: usize>(&mut self, param: Param<Tensor<N>>) -> Param<Tensor<N>> {
        let dtype = self.0;
        param.map(|t| t.cast(dtype))
    }
}

/// `|got - want| ≤ tol · max(1, max |want|)` everywhere, else a failure naming `what`.
fn close<const D: usize>(
    what: &str,
    got: Tensor<D>,
    want: Tensor<D>,
    tol: f32,
) -> Result<(), TestCaseError> {
    let (got, want) = (got.cast(DType::F32), want.cast(DType::F32));
    let scale = want.clone().abs().max().into_scalar::<f32>().max(1.0);
    let diff = (got - want).abs().max().into_scalar::<f32>();
    prop_assert!(
        diff <= tol * scale,
        "{what}: max difference {diff} > {tol} · {scale}"
    );
    Ok(())
}

/// The stored weights of every linear (without their adapters), in traversal order, in f32.
fn weights(tree: &Tree) -> Vec<Tensor<2>> {
    let mut out = Vec::new();
    let mut push = |l: &Linear| out.push(l.weight.base().cast(DType::F32));
    for block in &tree.blocks {
        match block {
            Block::Plain(l) => push(l),
            Block::Pair(p) => {
                push(&p.a);
                if let Some(b) = &p.b {
                    push(b);
                }
            }
        }
    }
    if let Some(extra) = &tree.extra {
        push(extra);
    }
    push(&tree.head);
    out
}

/// 256 cases (proptest's default, under a second here), or `PROPTEST_CASES`.
fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(256))
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn any_tree_counts_saves_loads_merges_and_unmerges(spec in spec()) {
        let device = Device::default();
        let base = spec.tree(&device);
        let targets = spec.targets(&base);
        let model = apply_lora(base.clone(), &spec.config(&targets)).unwrap();
        // Counts: r · (d_in + d_out) per target train, the base is frozen and unchanged.
        let report = param_report(&model);
        let base_count = param_report(&base).total;
        let factors: usize = targets.iter().map(|(_, i, o)| spec.rank * (i + o)).sum();
        prop_assert_eq!(report.trainable, factors);
        prop_assert_eq!(report.frozen, base_count);
        prop_assert_eq!(report.total, base_count + factors);
        // Trained stand-in: non-zero B, so every property below sees the update.
        let model = perturb(model, false, &device);
        let x = spec.x(&device);
        let out = model.forward(x.clone());
        let tol = spec.tolerance();
        // Save, load onto the base: the same outputs.
        let dir = scratch("props", &format!("{:x}", spec.targets ^ (spec.d as u64) << 60));
        save_adapter(&model, &dir).unwrap();
        let loaded = load_adapter(base.clone(), &dir).unwrap();
        close("reloaded", loaded.forward(x.clone()), out.clone(), 1e-5)?;
        // Merged (weights W + s·A·B in the base's dtype) against unmerged.
        let merged = merge_lora(model.clone()).unwrap();
        close("merged", merged.forward(x.clone()), out.clone(), tol)?;
        // Merge then unmerge gives back the base weights, within the dtype's rounding.
        let restored = unmerge_adapters(merge_adapters(model).unwrap());
        for (i, (got, want)) in weights(&restored).into_iter().zip(weights(&base)).enumerate() {
            close(&format!("unmerged weight {i}"), got, want, tol)?;
        }
        close("unmerged", restored.forward(x.clone()), out, tol)?;
    }

    #[test]
    fn any_tree_serves_a_mixed_batch_as_separate_runs(spec in spec(), pick in any::<u64>()) {
        let device = Device::default();
        let base = spec.tree(&device);
        let targets = spec.targets(&base);
        let config = spec.config(&targets);
        let model = add_adapter(base, "one", &config).unwrap();
        let model = add_adapter(model, "two", &config).unwrap();
        let model = perturb(model, true, &device);
        let choices = ["one", "two", BASE_ADAPTER];
        let names: Vec<&str> = (0..spec.rows).map(|i| choices[(pick >> (2 * i)) as usize % 3]).collect();
        let x = spec.x(&device);
        let mixed = with_adapter_names(&model, &names, || model.forward(x.clone())).unwrap();
        for (i, name) in names.iter().enumerate() {
            let alone = match *name {
                BASE_ADAPTER => set_adapters_enabled(model.clone(), false),
                name => set_active_adapters(model.clone(), &[name]).unwrap(),
            };
            let row = x.clone().narrow(0, i, 1);
            close(
                &format!("row {i} ({name})"),
                mixed.clone().narrow(0, i, 1),
                alone.forward(row),
                spec.tolerance(),
            )?;
        }
    }
}
