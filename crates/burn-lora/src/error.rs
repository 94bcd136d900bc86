//! The library's one error type: what can go wrong with a LoRA config, a model's targets,
//! or an adapter's files.
//!
//! Each variant names the file, key, field, module path or shape that was wrong, so a
//! user's bad input never panics the program.

use std::path::PathBuf;

/// Everything that can go wrong in burn-lora. New variants may come in a minor release, so
/// a `match` needs a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The LoRA rank was zero.
    #[error("invalid LoRA config: rank (PEFT `r`) must be at least 1, got 0")]
    ZeroRank,
    /// The LoRA rank exceeds what the layer can hold.
    #[error(
        "invalid LoRA config: rank {rank} is larger than min(d_in, d_out) = min({d_in}, {d_out}) for layer `{layer}`"
    )]
    RankTooLarge {
        /// The requested rank.
        rank: usize,
        /// The layer's input width.
        d_in: usize,
        /// The layer's output width.
        d_out: usize,
        /// The layer's module path (empty for a stand-alone layer).
        layer: String,
    },
    /// `alpha` was not a finite positive number.
    #[error("invalid LoRA config: alpha (PEFT `lora_alpha`) must be finite and > 0, got {0}")]
    InvalidAlpha(f64),
    /// A LoRA+ learning-rate ratio or embedding learning rate that is not a finite
    /// positive number.
    #[error("invalid LoRA+ setting: {name} must be finite and > 0, got {value}")]
    InvalidLoraPlus {
        /// The setting, with PEFT's name (`loraplus_lr_ratio`, `loraplus_lr_embedding`).
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// Dropout outside `[0, 1)`.
    #[error("invalid LoRA config: dropout (PEFT `lora_dropout`) must be in [0, 1), got {0}")]
    InvalidDropout(f64),
    /// A regex target could not be compiled.
    #[error("invalid LoRA config: target regex `{pattern}` does not compile: {message}")]
    InvalidTargetRegex {
        /// The pattern as given.
        pattern: String,
        /// The regex compiler's message.
        message: String,
    },
    /// A requested target module name matched no adaptable linear in the model.
    #[error("target module `{name}` matches no linear layer; available: {}", available.join(", "))]
    UnknownTarget {
        /// The name that matched nothing.
        name: String,
        /// Every adaptable linear path in the model.
        available: Vec<String>,
    },
    /// A module to save matched no module in the model.
    #[error("module to save `{name}` matches no parameter in the model")]
    UnknownModuleToSave {
        /// The name that matched nothing.
        name: String,
    },
    /// An adapter factor or merged weight held NaN or infinity.
    #[error("refusing to merge layer `{layer}`: its LoRA factors contain NaN or infinite values")]
    NonFinite {
        /// The layer's module path (empty for a stand-alone layer).
        layer: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A safetensors file could not be parsed (corrupt or truncated) or written.
    #[error("{}: not a valid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A JSON file could not be parsed, or lacks a required key.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The adapter config describes another kind of adapter.
    #[error("{}: peft_type is `{found}`, but burn-lora reads only `LORA` adapters", path.display())]
    WrongPeftType {
        /// The `adapter_config.json` file.
        path: PathBuf,
        /// The `peft_type` it declares.
        found: String,
    },
    /// A tensor the model needs is absent from the adapter file.
    #[error("{}: missing tensor `{key}`", path.display())]
    MissingKey {
        /// The safetensors file.
        path: PathBuf,
        /// The missing key.
        key: String,
    },
    /// The adapter file holds a tensor that no part of the model takes.
    #[error("{}: tensor `{key}` matches nothing in the model (adapter trained for another base?)", path.display())]
    UnexpectedKey {
        /// The safetensors file.
        path: PathBuf,
        /// The key nothing took.
        key: String,
    },
    /// A tensor had the wrong shape.
    #[error("shape mismatch for `{key}`: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// The tensor's key or module path.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape that was given.
        found: Vec<usize>,
    },
    /// An adapter file's tensor does not fit the model it is loaded into.
    #[error(
        "{}: `{key}` has shape {found:?}, but this base with the adapter's config needs {expected:?}; the adapter was trained for another base, or its rank differs from adapter_config.json's `r`",
        path.display()
    )]
    AdapterShape {
        /// The weights file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The shape the base and config need (PyTorch layout).
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor was stored in a dtype burn-lora does not read.
    #[error("{}: tensor `{key}` has dtype {dtype}; burn-lora reads F32, F16 and BF16", path.display())]
    UnsupportedDtype {
        /// The safetensors file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The dtype found.
        dtype: String,
    },
    /// A PEFT option burn-lora does not implement (DoRA, a base-changing init method, ...).
    #[error("{}: {what} is not supported by burn-lora", path.display())]
    Unsupported {
        /// The `adapter_config.json` file.
        path: PathBuf,
        /// The option and its value.
        what: String,
    },
    /// The model holds no LoRA adapter where one was needed (saving, merging).
    #[error("the model holds no LoRA adapter: call apply_lora or load_adapter first")]
    NoAdapter,
    /// A targeted weight already carries another reparameterization (Burn's own LoRA or
    /// QLoRA, a weight norm, ...): Burn keeps one per weight, so ours cannot be added.
    #[error(
        "`{path}` already carries Burn's `{name}` reparameterization, and Burn keeps one per weight: leave it out of the targets, or fold it in first (Module::materialize)"
    )]
    ForeignReparameterization {
        /// The linear's module path.
        path: String,
        /// The reparameterization's name (`Reparameterization::NAME`).
        name: String,
    },
    /// A module to save holds a quantized weight, which cannot train.
    #[error(
        "`{path}` is quantized, and a module to save trains in full precision: leave that module out of the quantization (Module::quantize_weights_group), or out of modules_to_save"
    )]
    QuantizedModuleToSave {
        /// The quantized parameter's path.
        path: String,
    },
    /// A quantization scheme's blocks do not divide a weight.
    #[error(
        "`{path}`: its weight {dims:?} is not divisible by the quantization block {block:?}; use a block that divides every linear, or a per-tensor scheme"
    )]
    QuantizeBlock {
        /// The linear's module path.
        path: String,
        /// The weight's shape.
        dims: Vec<usize>,
        /// The block's shape over the weight's dimensions.
        block: Vec<usize>,
    },
    /// Attaching left no parameter trainable.
    #[error("apply_lora left no parameter trainable (targets: {targets}); nothing would train")]
    NothingTrainable {
        /// The targets asked for.
        targets: String,
    },
    /// `apply_lora` on a model that already has adapters.
    #[error(
        "`{path}` already carries an adapter; add_adapter adds another beside it, merge_lora or a fresh base starts over"
    )]
    AlreadyAdapted {
        /// The linear's module path.
        path: String,
    },
    /// An adapter name that cannot be used: empty, `__base__`, or holding a `.`.
    #[error(
        "`{name}` cannot name an adapter: it must be non-empty, not `__base__`, and hold no `.`"
    )]
    InvalidAdapterName {
        /// The name.
        name: String,
    },
    /// `add_adapter` with a name the model already has.
    #[error("the model already has an adapter named `{name}`")]
    AdapterExists {
        /// The name.
        name: String,
    },
    /// An adapter name the model does not have.
    #[error("no adapter named `{name}`; the model has: {}", available.join(", "))]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The model's adapters.
        available: Vec<String>,
    },
    /// An operation that needs unmerged adapters, while some are merged.
    #[error("adapters are merged into the weights: unmerge_adapters first")]
    MergedAdapters,
    /// A mixed batch reached an adapter on a stock `burn::nn::Linear`, which computes the
    /// update densely and cannot give each example its own.
    #[error(
        "a mixed batch needs burn_lora::nn::Linear: an adapter was computed densely by a stock burn::nn::Linear"
    )]
    MixedBatchDense,
    /// A mixed batch during which no adapted layer ran on the calling thread.
    #[error(
        "a mixed batch reached no adapted layer on this thread: run the forward pass inside the closure, on the calling thread"
    )]
    MixedBatchUnrouted,
    /// Adapted layers of a mixed batch's model ran on another thread, where the names do
    /// not reach, and so served every example with the active adapters.
    #[error(
        "a mixed batch: {layers} adapted layer call(s) of this model ran on another thread, where the adapter names do not reach; run the forward pass on the calling thread (and no other forward of the same model meanwhile)"
    )]
    MixedBatchOffThread {
        /// How many adapted layer calls ran without the names.
        layers: usize,
    },
    /// A mixed batch's adapter names do not match the batch.
    #[error("a mixed batch names {expected} adapters, but a layer's input has {found} examples")]
    MixedBatchSize {
        /// The rows of the input.
        found: usize,
        /// The names given.
        expected: usize,
    },
    /// An option this API does not offer, with where to find it.
    #[error("{0}")]
    NotOffered(String),
    /// Weighted adapters that cannot be combined.
    #[error("cannot combine adapters: {0}")]
    Combine(String),
    /// An `adapter_config.json` holds an invalid value (rank 0, a dropout of 5, ...).
    #[error("{}: {source}", path.display())]
    AdapterConfig {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it ([`Error::ZeroRank`], [`Error::InvalidDropout`], ...).
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
