//! [`add_weighted_adapter`]: a new adapter made of weighted existing ones, as PEFT's
//! `add_weighted_adapter` makes it for the `linear` and `cat` combinations.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::Error;
use crate::apply::check_new_name;
use crate::config::LoraConfig;
use crate::lora::Lora;
use crate::manage::list_adapters;
use crate::sites::{adapters, replace_adapters};

/// How [`add_weighted_adapter`] combines adapters (PEFT's `combination_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// `A = Σ sign(wᵢsᵢ)·sqrt|wᵢsᵢ|·Aᵢ`, `B = Σ sqrt|wᵢsᵢ|·Bᵢ`, for adapters of one rank. The
    /// product `A·B` then holds cross terms `Aᵢ·Bⱼ`: it is PEFT's `linear`, not the sum of the
    /// weighted updates.
    Linear,
    /// `A = [w₁s₁·A₁ | w₂s₂·A₂ | ...]`, `B = [B₁; B₂; ...]`, of rank `Σ rᵢ`: exactly
    /// `Σ wᵢ·sᵢ·Aᵢ·Bᵢ`, the weighted sum of the updates.
    Cat,
}

/// Adds the adapter `name`, made of `sources` (adapter names with weights) as
/// `combination` says, beside them (PEFT's `add_weighted_adapter` with
/// `combination_type="linear"` or `"cat"`). Its rank is the sources' (`Linear`) or their
/// sum (`Cat`); its alpha equals its rank; rsLoRA, dropout and init come from the first
/// source, as in PEFT. It is added inactive and frozen; [`set_active_adapters`] switches
/// to it. One source is always combined linearly, as PEFT does.
///
/// [`set_active_adapters`]: crate::set_active_adapters
///
/// # Errors
///
/// No sources, a source the model lacks, a new name that is taken or invalid, a DoRA
/// source, or for `Linear` sources of different ranks on one layer: [`Error::Combine`] or
/// [`Error::UnknownAdapter`], naming what is wrong.
pub fn add_weighted_adapter<M: Module>(
    model: M,
    sources: &[(&str, f64)],
    name: &str,
    combination: Combination,
) -> Result<M, Error> {
    check_new_name(&model, name)?;
    let known = list_adapters(&model);
    if sources.is_empty() {
        return Err(Error::Combine("no adapters to combine".into()));
    }
    if let Some((missing, _)) = sources.iter().find(|(s, _)| !known.iter().any(|k| k == s)) {
        return Err(Error::UnknownAdapter {
            name: missing.to_string(),
            available: known,
        });
    }
    let combination = match sources.len() {
        1 => Combination::Linear,
        _ => combination,
    };
    let found = adapters(&model);
    let first = found
        .iter()
        .find_map(|(_, a)| a.get(sources[0].0))
        .expect("a known adapter sits on some layer");
    let (use_rslora, dropout, init) = (first.use_rslora(), first.dropout_prob(), first.init());
    for (site, adapter) in &found {
        let present: Vec<&Lora> = sources.iter().filter_map(|(s, _)| adapter.get(s)).collect();
        if let Some(lora) = present.iter().find(|l| l.use_dora()) {
            return Err(Error::Combine(format!(
                "`{}` is a DoRA adapter; PEFT's linear and cat combine LoRA factors only",
                lora.name()
            )));
        }
        if combination == Combination::Linear
            && present.windows(2).any(|w| w[0].rank() != w[1].rank())
        {
            let ranks: Vec<String> = present
                .iter()
                .map(|l| format!("{} has rank {}", l.name(), l.rank()))
                .collect();
            return Err(Error::Combine(format!(
                "linear needs one rank, but on `{}` {}; use cat",
                site.path,
                ranks.join(", ")
            )));
        }
    }
    Ok(replace_adapters(model, |_, _, adapter| {
        let present: Vec<(&Lora, f64)> = sources
            .iter()
            .filter_map(|(s, w)| adapter.get(s).map(|l| (l, *w)))
            .collect();
        if present.is_empty() {
            return (adapter, None);
        }
        let (a, b) = match combination {
            Combination::Linear => linear(&present),
            Combination::Cat => cat(&present),
        };
        let rank = a.dims()[1];
        let config = LoraConfig::new()
            .with_rank(rank)
            .with_alpha(rank as f64)
            .with_use_rslora(use_rslora)
            .with_dropout(dropout)
            .with_init(init);
        let frozen = |t: Tensor<2>| Param::from_tensor(t).set_require_grad(false);
        let lora = Lora::from_factors(name, frozen(a), frozen(b), None, &config);
        (adapter.push(lora), None)
    }))
}

/// PEFT's `linear`: the factors summed with the weights `sign·sqrt|w·s|` (A) and
/// `sqrt|w·s|` (B), taken to f32 as PEFT's `torch.tensor(weights)` takes them.
fn linear(present: &[(&Lora, f64)]) -> (Tensor<2>, Tensor<2>) {
    let mut a: Option<Tensor<2>> = None;
    let mut b: Option<Tensor<2>> = None;
    for (lora, weight) in present {
        let ws = weight * lora.scaling();
        let root = ws.abs().sqrt();
        let (ca, cb) = (root.copysign(ws) as f32, root as f32);
        let (ai, bi) = (
            lora.lora_a().val().detach().mul_scalar(ca),
            lora.lora_b().val().detach().mul_scalar(cb),
        );
        a = Some(a.map_or(ai.clone(), |acc| acc + ai));
        b = Some(b.map_or(bi.clone(), |acc| acc + bi));
    }
    (a.expect("one source"), b.expect("one source"))
}

/// PEFT's `cat`: `A`s scaled by `w` then `s` (in that order, as PEFT rounds) side by side,
/// `B`s stacked.
fn cat(present: &[(&Lora, f64)]) -> (Tensor<2>, Tensor<2>) {
    let a = present
        .iter()
        .map(|(lora, weight)| {
            lora.lora_a()
                .val()
                .detach()
                .mul_scalar(*weight as f32)
                .mul_scalar(lora.scaling() as f32)
        })
        .collect();
    let b = present
        .iter()
        .map(|(lora, _)| lora.lora_b().val().detach())
        .collect();
    (Tensor::cat(a, 1), Tensor::cat(b, 0))
}
