//! [`LoraConfig`]: what to adapt and how, with PEFT's field names.
//!
//! Size: about 360 lines of code and 95 of unit tests.

use burn::config::Config;
use burn::tensor::DType;

use crate::Error;

/// How the `A` factor is initialised. `B` always starts at zero, so an adapted model starts
/// out computing exactly what its base computes.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum LoraInit {
    /// PEFT's default (`init_lora_weights=True`): `A ~ kaiming_uniform(a = sqrt(5))` over
    /// fan-in, i.e. `U(-1/sqrt(d_in), 1/sqrt(d_in))`.
    KaimingUniform,
    /// PEFT's `init_lora_weights="gaussian"`: `A ~ N(0, std = 1/r)`.
    Gaussian,
}

/// Which biases train and are saved with an adapter (PEFT: `bias`).
#[derive(Config, Debug, PartialEq, Copy)]
pub enum LoraBias {
    /// No bias trains (PEFT's `"none"`, the default).
    None,
    /// Every bias of the model trains and is saved with the adapter (PEFT's `"all"`).
    All,
    /// The biases of the adapted layers train and are saved (PEFT's `"lora_only"`).
    LoraOnly,
}

impl LoraBias {
    /// PEFT's name for it: `none`, `all`, `lora_only`.
    pub fn peft_name(self) -> &'static str {
        match self {
            LoraBias::None => "none",
            LoraBias::All => "all",
            LoraBias::LoraOnly => "lora_only",
        }
    }

    /// The setting PEFT names `name`, if there is one.
    pub fn from_peft_name(name: &str) -> Option<Self> {
        [LoraBias::None, LoraBias::All, LoraBias::LoraOnly]
            .into_iter()
            .find(|b| b.peft_name() == name)
    }
}

/// The dtype of an adapter's factors `A` and `B` (and DoRA's magnitude).
#[derive(Config, Debug, PartialEq, Copy)]
pub enum AdapterDtype {
    /// f32 whatever the base's dtype, PEFT's default (`autocast_adapter_dtype=True`): on an
    /// f16, bf16 or quantized base the factors, their gradients and their optimizer state
    /// stay in full precision. The branch computes in f32 and its output is cast to the
    /// input's dtype, as PEFT casts it back.
    F32,
    /// f16 factors.
    F16,
    /// bf16 factors.
    BF16,
    /// The base weight's own float dtype, f32 for a quantized base (PEFT's
    /// `autocast_adapter_dtype=False`).
    Base,
}

impl AdapterDtype {
    /// The factors' dtype on a weight of dtype `base`.
    pub fn resolve(self, base: DType) -> DType {
        match self {
            AdapterDtype::F32 => DType::F32,
            AdapterDtype::F16 => DType::F16,
            AdapterDtype::BF16 => DType::BF16,
            AdapterDtype::Base => match base {
                DType::QFloat(_) => DType::F32,
                dtype => dtype,
            },
        }
    }
}

/// Configuration of a LoRA adapter, field for field the subset of PEFT's `LoraConfig` that
/// burn-lora implements.
///
/// ```
/// use burn_lora::LoraConfig;
///
/// let config = LoraConfig::new().with_rank(4).with_alpha(16.0);
/// assert_eq!(config.scaling(), 4.0); // alpha / r
/// assert!(config.validate().is_ok());
/// ```
#[derive(Config, Debug)]
pub struct LoraConfig {
    /// Rank of the update (PEFT: `r`). Default 8.
    #[config(default = 8)]
    pub rank: usize,
    /// Scaling numerator (PEFT: `lora_alpha`). The update is scaled by `alpha / rank`.
    /// Default 8.0.
    #[config(default = 8.0)]
    pub alpha: f64,
    /// Dropout on the adapter's input only, active only while training (PEFT:
    /// `lora_dropout`). Default 0.0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Scale by `alpha / sqrt(rank)` instead of `alpha / rank` (PEFT: `use_rslora`).
    /// Default false.
    #[config(default = false)]
    pub use_rslora: bool,
    /// DoRA, weight-decomposed LoRA (PEFT: `use_dora`): each adapted linear also learns a
    /// magnitude per output, and the update is applied to the weight's direction only.
    /// Default false.
    #[config(default = false)]
    pub use_dora: bool,
    /// Initialisation of `A` (PEFT: `init_lora_weights`). Default
    /// [`LoraInit::KaimingUniform`].
    #[config(default = "LoraInit::KaimingUniform")]
    pub init: LoraInit,
    /// Module names to adapt (PEFT: `target_modules` as a list). A name matches a layer
    /// (`Linear`, `Embedding`, `Conv1d` or `Conv2d`) whose module path (Burn's own, e.g.
    /// `layers.0.mha.query`) equals it or ends with `.` and the name; `"all-linear"`
    /// matches every `burn::nn::Linear` except `modules_to_save`, never an embedding or a
    /// convolution (as in PEFT). Default `["query", "value"]`, as in the LoRA paper.
    #[config(default = "vec![String::from(\"query\"), String::from(\"value\")]")]
    pub target_modules: Vec<String>,
    /// A regular expression that must match a layer's whole path (PEFT: `target_modules`
    /// as a string). When set, it replaces `target_modules`. Default `None`.
    #[config(default = "None")]
    pub target_regex: Option<String>,
    /// Modules outside the adapted linears that are trained and saved with the adapter,
    /// such as a classification head (PEFT: `modules_to_save`). Matched like
    /// `target_modules`. Default empty.
    #[config(default = "Vec::new()")]
    pub modules_to_save: Vec<String>,
    /// Linears never adapted even when a target matches them, matched like
    /// `target_modules` (PEFT: `exclude_modules`). Default empty.
    #[config(default = "Vec::new()")]
    pub exclude_modules: Vec<String>,
    /// Per-module ranks (PEFT: `rank_pattern`): `(pattern, rank)` pairs. A target takes the
    /// rank of the first pattern that matches its path as PEFT matches them, the regex
    /// `(.*\.)?(pattern)$` over the whole path, and `rank` when none does.
    #[config(default = "Vec::new()")]
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alphas (PEFT: `alpha_pattern`), matched as `rank_pattern`.
    #[config(default = "Vec::new()")]
    pub alpha_pattern: Vec<(String, f64)>,
    /// Only the layers with these indexes are adapted (PEFT: `layers_to_transform`); empty:
    /// every layer. As in PEFT, it filters targets named by a suffix of their path (not a
    /// regex, nor a target named by its whole path), and a layer's index is the number
    /// after the first path segment named in `layers_pattern`, or with no
    /// `layers_pattern`, the first number that follows two segments
    /// (`model.layers.3.attn.q`).
    #[config(default = "Vec::new()")]
    pub layers_to_transform: Vec<usize>,
    /// The names of the layer lists `layers_to_transform` counts in (PEFT:
    /// `layers_pattern`), such as `layer` or `layers`.
    #[config(default = "Vec::new()")]
    pub layers_pattern: Vec<String>,
    /// The factors' dtype. Default [`AdapterDtype::F32`], as PEFT's
    /// `autocast_adapter_dtype=True`; adapter files store the factors in it, as PEFT's do.
    #[config(default = "AdapterDtype::F32")]
    pub adapter_dtype: AdapterDtype,
    /// Which biases train and are saved with the adapter (PEFT: `bias`): none, every bias of
    /// the model, or those of the adapted layers. Default [`LoraBias::None`]. A trained
    /// bias changes the base model's output even with the adapter disabled, as in PEFT.
    #[config(default = "LoraBias::None")]
    pub bias: LoraBias,
}

impl LoraConfig {
    /// The factor the low-rank branch is multiplied by: `alpha / r`, or `alpha / sqrt(r)`
    /// with rsLoRA.
    pub fn scaling(&self) -> f64 {
        scaling(self.alpha, self.rank, self.use_rslora)
    }

    /// Checks the fields that do not depend on a layer: rank ≥ 1, finite `alpha > 0`,
    /// dropout in `[0, 1)`, and a target regex that compiles.
    pub fn validate(&self) -> Result<(), Error> {
        if self.rank == 0 {
            return Err(Error::ZeroRank);
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::InvalidAlpha(self.alpha));
        }
        if !self.dropout.is_finite() || !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidDropout(self.dropout));
        }
        for pattern in &self.layers_pattern {
            layer_regex(Some(pattern))?;
        }
        for (pattern, rank) in &self.rank_pattern {
            pattern_regex(pattern)?;
            if *rank == 0 {
                return Err(Error::ZeroRank);
            }
        }
        for (pattern, alpha) in &self.alpha_pattern {
            pattern_regex(pattern)?;
            if !alpha.is_finite() || *alpha <= 0.0 {
                return Err(Error::InvalidAlpha(*alpha));
            }
        }
        self.target_matcher().map(|_| ())
    }

    /// The config of the adapter on the linear at `path`: this one with the rank and
    /// alpha that `rank_pattern` and `alpha_pattern` give that path (PEFT's
    /// `get_pattern_key`), and no patterns.
    pub fn for_module(&self, path: &str) -> LoraConfig {
        let mut config = self.clone();
        if let Some(rank) = pattern_value(&self.rank_pattern, path) {
            config.rank = rank;
        }
        if let Some(alpha) = pattern_value(&self.alpha_pattern, path) {
            config.alpha = alpha;
        }
        config.rank_pattern.clear();
        config.alpha_pattern.clear();
        config
    }

    /// Checks the config against one layer: everything [`validate`](Self::validate)
    /// checks, and `rank ≤ min(d_in, d_out)`.
    pub fn validate_for_layer(&self, d_in: usize, d_out: usize, layer: &str) -> Result<(), Error> {
        self.validate()?;
        if self.rank > d_in.min(d_out) {
            return Err(Error::RankTooLarge {
                rank: self.rank,
                d_in,
                d_out,
                layer: layer.to_string(),
            });
        }
        Ok(())
    }

    /// Compiles the target selection into a matcher over module paths.
    pub(crate) fn target_matcher(&self) -> Result<TargetMatcher, Error> {
        match &self.target_regex {
            Some(pattern) => regex::Regex::new(&format!("^(?:{pattern})$"))
                .map(TargetMatcher::Regex)
                .map_err(|e| Error::InvalidTargetRegex {
                    pattern: pattern.clone(),
                    message: e.to_string(),
                }),
            None => Ok(TargetMatcher::Names(self.target_modules.clone())),
        }
    }

    /// Whether `layers_to_transform` keeps the target at `path` (PEFT's
    /// `check_target_module_exists`).
    pub(crate) fn in_transformed_layers(&self, path: &str) -> bool {
        if self.layers_to_transform.is_empty()
            || self.target_regex.is_some()
            || self.target_modules.iter().any(|name| name == path)
        {
            return true;
        }
        let patterns: Vec<Option<&String>> = match self.layers_pattern.is_empty() {
            true => vec![None],
            false => self.layers_pattern.iter().map(Some).collect(),
        };
        let index = patterns.into_iter().find_map(|pattern| {
            let re = layer_regex(pattern).ok()?;
            let captures = re.captures(path)?;
            captures.name("idx")?.as_str().parse::<usize>().ok()
        });
        index.is_some_and(|i| self.layers_to_transform.contains(&i))
    }

    /// Whether the linear at `path` is excluded, by `exclude_modules` or by being (inside)
    /// a module to save.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        within_any(path, &self.exclude_modules) || within_any(path, &self.modules_to_save)
    }
}

/// The regex PEFT finds a layer index with: the first number after a segment named
/// `pattern`, or with none, the first number that follows two segments.
fn layer_regex(pattern: Option<&String>) -> Result<regex::Regex, Error> {
    let source = match pattern {
        None => r"^.*?\.[^.]*\.(?P<idx>\d+)\.".to_string(),
        Some(p) => format!(r"^(?:.*?\.)?(?:{p})\.(?P<idx>\d+)\."),
    };
    regex::Regex::new(&source).map_err(|e| Error::InvalidTargetRegex {
        pattern: pattern.cloned().unwrap_or_default(),
        message: e.to_string(),
    })
}

/// A `rank_pattern` / `alpha_pattern` key compiled as PEFT matches it: `(.*\.)?(key)$`
/// from the start of the path.
fn pattern_regex(pattern: &str) -> Result<regex::Regex, Error> {
    regex::Regex::new(&format!("^(?:.*\\.)?(?:{pattern})$")).map_err(|e| {
        Error::InvalidTargetRegex {
            pattern: pattern.to_string(),
            message: e.to_string(),
        }
    })
}

/// The value of the first pattern that matches `path`.
fn pattern_value<T: Copy>(patterns: &[(String, T)], path: &str) -> Option<T> {
    patterns
        .iter()
        .find(|(pattern, _)| pattern_regex(pattern).is_ok_and(|re| re.is_match(path)))
        .map(|(_, value)| *value)
}

/// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA: the one formula for the branch's scale.
pub(crate) fn scaling(alpha: f64, rank: usize, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    }
}

/// Whether `path` is selected by `name` the way PEFT selects modules: the whole path, or a
/// suffix after a `.`.
pub fn name_matches(path: &str, name: &str) -> bool {
    path == name
        || path
            .strip_suffix(name)
            .is_some_and(|prefix| prefix.ends_with('.'))
}

/// Whether a module at `module_path` is one of `names` or lies inside one, each name
/// matched as PEFT matches module names (whole path or dotted suffix).
pub(crate) fn within_any(module_path: &str, names: &[String]) -> bool {
    let parts: Vec<&str> = module_path.split('.').collect();
    (1..=parts.len()).any(|n| {
        let prefix = parts[..n].join(".");
        names.iter().any(|name| name_matches(&prefix, name))
    })
}

/// The compiled form of a config's target selection.
#[derive(Debug, Clone)]
pub(crate) enum TargetMatcher {
    /// PEFT's list form, plus `all-linear`.
    Names(Vec<String>),
    /// PEFT's string form: a full-match regex.
    Regex(regex::Regex),
}

impl TargetMatcher {
    /// Whether the layer of kind `kind` at `path` is a target: `all-linear` selects linears
    /// only, as in PEFT; a name or a regex selects any kind.
    pub(crate) fn matches(&self, path: &str, kind: crate::apply::LayerKind) -> bool {
        match self {
            TargetMatcher::Names(names) => names.iter().any(|name| {
                (name == ALL_LINEAR && kind == crate::apply::LayerKind::Linear)
                    || name_matches(path, name)
            }),
            TargetMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// The target name that selects every linear except the modules to save, as in PEFT.
pub const ALL_LINEAR: &str = "all-linear";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_peft() {
        let config = LoraConfig::new();
        assert_eq!(config.rank, 8);
        assert_eq!(config.alpha, 8.0);
        assert_eq!(config.dropout, 0.0);
        assert!(!config.use_rslora);
        assert_eq!(config.init, LoraInit::KaimingUniform);
        assert_eq!(config.target_modules, vec!["query", "value"]);
        assert!(config.exclude_modules.is_empty());
    }

    #[test]
    fn patterns_match_as_peft_get_pattern_key() {
        let config = LoraConfig::new()
            .with_rank(4)
            .with_alpha(8.0)
            .with_rank_pattern(vec![("value".into(), 2), (r"layers\.1\..*".into(), 6)])
            .with_alpha_pattern(vec![("attn.query".into(), 3.0)]);
        assert!(config.validate().is_ok());
        let at = |path: &str| {
            let c = config.for_module(path);
            (c.rank, c.alpha)
        };
        assert_eq!(at("layers.0.attn.value"), (2, 8.0)); // a dotted suffix
        assert_eq!(at("layers.0.attn.my_value"), (4, 8.0)); // not a whole segment
        assert_eq!(at("layers.1.attn.value"), (2, 8.0)); // the first match wins
        assert_eq!(at("layers.1.attn.key"), (6, 8.0)); // a regex over the path
        assert_eq!(at("layers.0.attn.query"), (4, 3.0));
        assert!(config.for_module("x").rank_pattern.is_empty());
        let bad = LoraConfig::new().with_rank_pattern(vec![("(".into(), 2)]);
        assert!(bad.validate().is_err());
        let zero = LoraConfig::new().with_rank_pattern(vec![("q".into(), 0)]);
        assert!(matches!(zero.validate(), Err(Error::ZeroRank)));
    }

    #[test]
    fn layers_to_transform_counts_layers_as_peft_does() {
        let config = LoraConfig::new()
            .with_target_modules(vec![
                "query".into(),
                "bert.encoder.layer.0.attention.self.value".into(),
            ])
            .with_layers_to_transform(vec![1]);
        let keeps = |c: &LoraConfig, path: &str| c.in_transformed_layers(path);
        assert!(keeps(&config, "bert.encoder.layer.1.attention.self.query"));
        assert!(!keeps(&config, "bert.encoder.layer.0.attention.self.query"));
        // The first number after two segments: here `encoder.layer` is not reached.
        assert!(!keeps(&config, "layer.1.query"));
        // A target named by its whole path is not filtered (PEFT's exact-key branch).
        assert!(keeps(&config, "bert.encoder.layer.0.attention.self.value"));
        let named = config.clone().with_layers_pattern(vec!["layer".into()]);
        assert!(keeps(&named, "layer.1.query"));
        assert!(keeps(&named, "bert.encoder.layer.1.attention.self.query"));
        assert!(!keeps(&named, "bert.encoder.layer.10.attention.self.query"));
        assert!(!keeps(&named, "bert.encoder.block.1.query"));
        assert!(keeps(&LoraConfig::new(), "anything.0.query"));
    }

    #[test]
    fn within_any_matches_the_module_or_an_ancestor() {
        let names = vec!["pooler".to_string()];
        assert!(within_any("bert.pooler.dense", &names));
        assert!(within_any("pooler", &names));
        assert!(!within_any("bert.encoder.layer.0.output.dense", &names));
    }

    #[test]
    fn scaling_is_alpha_over_r_or_sqrt_r() {
        let config = LoraConfig::new().with_rank(4).with_alpha(8.0);
        assert_eq!(config.scaling(), 2.0);
        assert_eq!(config.with_use_rslora(true).scaling(), 4.0);
    }

    #[test]
    fn names_match_whole_path_or_dotted_suffix() {
        assert!(name_matches("query", "query"));
        assert!(name_matches("blocks.0.attn.query", "query"));
        assert!(name_matches("blocks.0.attn.query", "attn.query"));
        assert!(!name_matches("blocks.0.attn.subquery", "query"));
        assert!(!name_matches("blocks.0.attn.query.x", "query"));
    }

    #[test]
    fn regex_targets_match_the_whole_path() {
        let config = LoraConfig::new().with_target_regex(Some(r".*\.(query|value)".into()));
        let matcher = config.target_matcher().unwrap();
        let linear = crate::apply::LayerKind::Linear;
        assert!(matcher.matches("blocks.1.attn.value", linear));
        assert!(!matcher.matches("blocks.1.attn.value_proj", linear));
    }
}
