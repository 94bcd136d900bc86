//! Module paths as users and PEFT write them, read off Burn's own traversal:
//! `layers.0.mha.query`, `attn.query.weight`.
//!
//! Burn's traversal also enters enum variants (`query.Base.weight`); those are skipped, so a
//! path names the same layer whichever variant it currently is. An adapter's factors sit
//! below the weight they adapt (`query.weight.lora.default.lora_a`, the `lora` entered with the
//! container type `Reparameterization`, then the adapter's name); [`PathStack::adapter_owner`] names the linear.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// The container type Burn enters a parameter's reparameterization with.
const REPARAMETERIZATION: &str = "Reparameterization";

/// The path of the module or parameter a visitor is at, maintained from Burn's
/// `enter_module` / `exit_module` calls.
#[derive(Debug, Default, Clone)]
pub(crate) struct PathStack {
    parts: Vec<String>,
    /// The container type each pushed part was entered from (`Struct:Linear`, ...).
    containers: Vec<String>,
    /// Whether each enter call was skipped (enum variants), so its exit is skipped too.
    skipped: Vec<bool>,
}

impl PathStack {
    /// Records entering `name` from a container of type `container_type`.
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        let is_variant = container_type.starts_with("Enum:");
        self.skipped.push(is_variant);
        if !is_variant {
            self.parts.push(name.to_string());
            self.containers.push(container_type.to_string());
        }
    }

    /// Records leaving the innermost entered module.
    pub(crate) fn exit(&mut self) {
        if self.skipped.pop() == Some(false) {
            self.parts.pop();
            self.containers.pop();
        }
    }

    /// The path of the enclosing module and the last part (a parameter's name).
    pub(crate) fn split_last(&self) -> (String, String) {
        match self.parts.split_last() {
            Some((last, rest)) => (rest.join("."), last.clone()),
            None => (String::new(), String::new()),
        }
    }

    /// The container type the last part was entered from, e.g. `Struct:Linear` for a
    /// linear layer's `weight`.
    pub(crate) fn parent_type(&self) -> &str {
        self.containers.last().map(String::as_str).unwrap_or("")
    }

    /// Inside a parameter's reparameterization (an adapter's factor): the module path that
    /// owns the adapted parameter, and that parameter's name (`("attn.query", "weight")`).
    pub(crate) fn adapter_owner(&self) -> Option<(String, String)> {
        let at = self
            .containers
            .iter()
            .position(|c| c == REPARAMETERIZATION)?;
        let param = at.checked_sub(1)?;
        Some((self.parts[..param].join("."), self.parts[param].clone()))
    }

    /// Inside a named adapter (an adapter's factor): the adapter's name, e.g. `default`.
    pub(crate) fn adapter_name(&self) -> Option<&str> {
        let at = self
            .containers
            .iter()
            .position(|c| c == REPARAMETERIZATION)?;
        self.parts.get(at + 1).map(String::as_str)
    }

    /// The module a parameter is counted under: its own module, or for an adapter's factor
    /// the linear it adapts.
    pub(crate) fn owning_module(&self) -> String {
        match self.adapter_owner() {
            Some((module, _)) => module,
            None => self.split_last().0,
        }
    }
}

/// `parent.name`, or `name` at the root.
pub fn join_path(parent: &str, name: &str) -> String {
    match parent.is_empty() {
        true => name.to_string(),
        false => format!("{parent}.{name}"),
    }
}

/// What a [`visit_params`] walk does at each float parameter, given its path.
pub(crate) trait OnParam {
    fn on_param<const D: usize>(&mut self, path: &PathStack, param: &Param<Tensor<D>>);
}

/// Visits every float parameter of `model` with `f`, keeping the path up to date: the one
/// place the enter/exit bookkeeping is written.
pub(crate) fn visit_params<M: Module, F: OnParam>(model: &M, f: &mut F) {
    struct Walk<'a, F> {
        path: PathStack,
        f: &'a mut F,
    }
    impl<F: OnParam> ModuleVisitor for Walk<'_, F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.f.on_param(&self.path, param);
        }
    }
    model.visit(&mut Walk {
        path: PathStack::default(),
        f,
    });
}
