//! Module paths as users and PEFT write them: `blocks.0.attn.query.lora_a`.
//!
//! Burn's traversal also enters enum variants (`query.Lora.lora_a`); those are skipped
//! here, so a path names the same layer whichever variant it currently is.

/// The path of the module or parameter a visitor is at, maintained from Burn's
/// `enter_module` / `exit_module` calls.
#[derive(Debug, Default, Clone)]
pub(crate) struct PathStack {
    parts: Vec<String>,
    /// The container type each pushed part was entered from (`Struct:Linear`, ...).
    containers: Vec<String>,
    /// How many enter calls were skipped (enum variants), so their exits are skipped too.
    skipped: Vec<bool>,
}

impl PathStack {
    /// Records entering `name` from a container of type `container_type`.
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        let is_variant = container_type.starts_with("Enum:");
        self.skipped.push(is_variant);
        if !is_variant {
            // A field named like `self_` stands for a PyTorch name that is a Rust keyword
            // (BERT's `attention.self`): the trailing underscore is not part of the key.
            let name = match name.strip_suffix('_') {
                Some(stem) if !stem.is_empty() => stem,
                _ => name,
            };
            self.parts.push(name.to_string());
            self.containers.push(container_type.to_string());
        }
    }

    /// Records leaving the innermost entered module.
    pub(crate) fn exit(&mut self, _name: &str, _container_type: &str) {
        if self.skipped.pop() == Some(false) {
            self.parts.pop();
            self.containers.pop();
        }
    }

    /// The whole dotted path.
    pub(crate) fn path(&self) -> String {
        self.parts.join(".")
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
}
