//! Checks before attaching adapters: each targeted weight must carry no other
//! reparameterization (a quantized weight is fine: see `Lora::new`).
//!
//! Burn keeps one reparameterization per weight, and its `Param::map` puts a weight's own
//! back after a mapper ran: attaching ours to a weight that carries Burn's LoRA would
//! silently drop ours. Burn's traversal announces a weight's reparameterization as a
//! module of type `Reparameterization` entered right after the weight itself, which is
//! how [`weight_facts`] sees it.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::Error;

/// What a traversal saw of one weight.
#[derive(Debug, Default)]
struct Fact {
    /// The name of the reparameterization it carries.
    reparameterization: Option<String>,
}

struct Facts {
    facts: HashMap<ParamId, Fact>,
    last: Option<ParamId>,
}

impl ModuleVisitor for Facts {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Reparameterization"
            && let Some(id) = self.last.take()
        {
            self.facts.entry(id).or_default().reparameterization = Some(name.to_string());
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.facts.entry(param.id).or_default();
        self.last = Some(param.id);
    }
}

fn weight_facts<M: Module>(model: &M) -> HashMap<ParamId, Fact> {
    let mut facts = Facts {
        facts: HashMap::new(),
        last: None,
    };
    model.visit(&mut facts);
    facts.facts
}

/// Errors naming the first target (by `(weight id, path)`, in order) that already carries a reparameterization. Weights that carry our adapters are not passed.
pub(crate) fn check_targets<M: Module>(
    model: &M,
    targets: &[(ParamId, String)],
) -> Result<(), Error> {
    let facts = weight_facts(model);
    for (id, path) in targets {
        let Some(fact) = facts.get(id) else { continue };
        if let Some(name) = &fact.reparameterization {
            return Err(Error::ForeignReparameterization {
                path: path.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(())
}
