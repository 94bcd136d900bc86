//! [`CausalLm`]: what generation and SFT ask of a decoder, whichever family it is (our
//! [`Gpt`](crate::model::Gpt) or a Hugging Face [`Llama`](crate::model::llama::Llama)),
//! and the [`KvCache`] that makes decoding one token cost one token.

use burn::tensor::{Bool, Device, Int, Tensor};

/// A decoder-only language model: tokens at given positions in, hidden states out, with
/// the keys and values of earlier positions kept in a [`KvCache`].
///
/// Positions are explicit so that a left-padded batch gives each row the positions it
/// would have alone (`0` at its first real token), as transformers' `generate` does.
pub trait CausalLm {
    /// Hidden states after the final norm for `tokens`, which follow the positions already
    /// in `cache`; their keys and values are appended to it.
    ///
    /// # Shapes
    ///
    /// - tokens, positions: `[batch, seq]`
    /// - bias: `[batch, 1, seq, cached + seq]`, from [`decoder_bias`]
    /// - output: `[batch, seq, d_model]`
    fn hidden_cached(
        &self,
        tokens: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        bias: Tensor<4>,
        cache: &mut KvCache,
    ) -> Tensor<3>;

    /// Next-token logits from hidden states.
    ///
    /// # Shapes
    ///
    /// - hidden: `[batch, seq, d_model]`
    /// - output: `[batch, seq, vocab_size]`
    fn head(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// The longest sequence the model can take (a learned position table's size), or
    /// `None` where positions are computed (rotary embeddings).
    fn context_len(&self) -> Option<usize>;

    /// The number of layers, each of which keeps one entry of a [`KvCache`].
    fn num_layers(&self) -> usize;

    /// The device the weights live on.
    fn device(&self) -> Device;

    /// Next-token logits for a right-padded batch, with no cache: what training computes.
    ///
    /// # Shapes
    ///
    /// - tokens, padding: `[batch, seq]`, padding true at padding tokens
    /// - output: `[batch, seq, vocab_size]`
    fn logits(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        self.head(self.hidden(tokens, padding))
    }

    /// Hidden states after the final norm for a right-padded batch, with no cache: what
    /// [`logits`](CausalLm::logits) gives the head.
    ///
    /// # Shapes
    ///
    /// - tokens, padding: `[batch, seq]`, padding true at padding tokens
    /// - output: `[batch, seq, d_model]`
    fn hidden(&self, tokens: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let positions = positions(batch, seq, &tokens.device());
        let bias = decoder_bias(padding, seq);
        let mut cache = KvCache::disabled(self.num_layers());
        self.hidden_cached(tokens, positions, bias, &mut cache)
    }

    /// The head as the linear layer it is, for a loss that computes the logits a chunk at
    /// a time ([`linear_cross_entropy`](crate::train::head_loss::linear_cross_entropy)).
    fn linear_head(&self) -> LinearHead;
}

/// A linear output head: `logits = hidden · Wᵀ + b` for a weight stored `[vocab, d]`
/// (PyTorch's layout, and a tied embedding's), or `hidden · W + b` for one stored
/// `[d, vocab]` (Burn's `Linear`). The tensors are the parameters' values, adapters
/// included, tracked where the parameters train.
#[derive(Debug, Clone)]
pub struct LinearHead {
    /// The weight, `[vocab, d]` when `out_in`, else `[d, vocab]`.
    pub weight: Tensor<2>,
    /// Whether the weight is stored `[vocab, d]`.
    pub out_in: bool,
    /// The bias, `[vocab]`, if any.
    pub bias: Option<Tensor<1>>,
}

impl LinearHead {
    /// The number of logits per position.
    pub fn vocab(&self) -> usize {
        self.weight.dims()[if self.out_in { 0 } else { 1 }]
    }

    /// The width of the hidden states it reads.
    pub fn d_model(&self) -> usize {
        self.weight.dims()[if self.out_in { 1 } else { 0 }]
    }
}

/// Positions `0..seq` for each of `batch` rows, `[batch, seq]`: an unpadded (or
/// right-padded) batch with nothing cached.
pub fn positions(batch: usize, seq: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::<1, Int>::arange(0..seq as i64, device)
        .reshape([1, seq])
        .repeat_dim(0, batch)
}

/// The keys and values of the positions a decoder has seen, one entry per layer, each
/// `[batch, kv_heads, cached, head_dim]`. A disabled cache stores nothing: a forward pass
/// through it attends to its own tokens only.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    enabled: bool,
}

impl KvCache {
    /// An empty cache for a model of `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: vec![None; layers],
            enabled: true,
        }
    }

    /// A cache that keeps nothing (training, or generation without a cache).
    pub fn disabled(layers: usize) -> Self {
        Self {
            enabled: false,
            ..Self::new(layers)
        }
    }

    /// How many positions are cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends layer `layer`'s new keys and values and returns all of them, cached first.
    ///
    /// # Shapes
    ///
    /// - k, v: `[batch, kv_heads, seq, head_dim]`
    /// - output: `[batch, kv_heads, cached + seq, head_dim]` each
    pub fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((k0, v0)) => (Tensor::cat(vec![k0, k], 2), Tensor::cat(vec![v0, v], 2)),
            None => (k, v),
        };
        if self.enabled {
            self.layers[layer] = Some((k.clone(), v.clone()));
        }
        (k, v)
    }
}

/// The additive attention bias of `queries` new positions over all `keys` positions
/// (cached first): 0 where a query may attend to a key, `-inf` elsewhere. Query `i` sits
/// at absolute position `keys - queries + i` and attends to every earlier or equal
/// position that is not padding, and always to itself, so no row is all `-inf` (whose
/// softmax would be NaN), even at a padding position. `-inf` rather than `-1e9`: its
/// exponential is a plain 0 (see [`attention_bias`](crate::model::attention_bias)).
///
/// ```
/// use burn::tensor::{Bool, Device, Tensor, TensorData};
/// use burn_lora_demo::model::decoder_bias;
///
/// // One left-padded row: [pad, a, b], then one new query for position 3.
/// let device = Device::default();
/// let padding = Tensor::<2, Bool>::from_data(TensorData::from([[true, false, false, false]]), &device);
/// let bias: Vec<f32> = decoder_bias(padding, 1).into_data().to_vec().unwrap();
/// assert_eq!(bias, [f32::NEG_INFINITY, 0.0, 0.0, 0.0]);
/// ```
///
/// # Shapes
///
/// - padding: `[batch, keys]`, true at padding keys
/// - output: `[batch, 1, queries, keys]`
pub fn decoder_bias(padding: Tensor<2, Bool>, queries: usize) -> Tensor<4> {
    let [batch, keys] = padding.dims();
    let device = padding.device();
    let rows = Tensor::<1, Int>::arange((keys - queries) as i64..keys as i64, &device)
        .reshape([queries, 1])
        .float();
    let cols = Tensor::<1, Int>::arange(0..keys as i64, &device)
        .reshape([1, keys])
        .float();
    let offset = (cols - rows).reshape([1, 1, queries, keys]); // key - query position
    let future = offset.clone().greater_elem(0.5).float();
    let own = offset.equal_elem(0.0).float();
    let pad = padding.float().reshape([batch, 1, 1, keys]);
    let blocked = (future + pad - own.mul_scalar(2.0)).greater_elem(0.5); // [batch, 1, queries, keys]
    Tensor::zeros([batch, 1, queries, keys], &device).mask_fill(blocked, f32::NEG_INFINITY)
}
