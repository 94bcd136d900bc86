//! Inference for a trained classifier: class probabilities for many texts, batched by
//! length and spread over the cores ([`predict`]), and [`accuracy`].

use burn::tensor::Device;
use burn::tensor::activation::softmax;

use crate::data::class_batch;
use crate::model::Pooling;
use crate::train::Classifier;
use crate::train::metrics::argmax;
use crate::train::parallel::on_threads;
use crate::train::replicas_for;

/// Class probabilities (one per output of the head, summing to 1) for each sequence, in
/// input order.
/// Sequences are batched by length, so little time goes to padding, and the batches are
/// dealt out to one thread per core ([`default_replicas`](crate::train::default_replicas)),
/// at least one chunk per thread. Each answer depends only on its own text (padding is
/// masked), up to float rounding.
pub fn predict<C: Classifier>(
    model: &C,
    tokens: &[Vec<u32>],
    pooling: Pooling,
    pad_id: u32,
) -> Vec<Vec<f32>> {
    let device: Device = model.head_layer().weight.device();
    let classes = model.head_layer().weight.dims()[1];
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.sort_by_key(|&i| tokens[i].len());
    // Chunks of at most 64, and at least one per thread, so that a few texts also use
    // every core.
    let cores = replicas_for(&device).max(1);
    let chunk = tokens.len().div_ceil(cores).clamp(1, 64);
    let chunks: Vec<&[usize]> = order.chunks(chunk).collect();
    let threads = cores.min(chunks.len()).max(1);
    // Thread t takes chunks t, t + threads, ...: each gets short and long batches alike.
    let run = |t: usize, model: C| {
        let mut out = Vec::new();
        for chunk in chunks.iter().skip(t).step_by(threads) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| tokens[i].as_slice()).collect();
            let batch = class_batch(&seqs, &vec![0; chunk.len()], pad_id, &device);
            let pool = pooling.weights(&batch);
            let p = softmax(model.classify(batch.tokens, batch.padding, pool), 1);
            let values = p
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap_or_default();
            for (row, &i) in chunk.iter().enumerate() {
                let p = values
                    .get(row * classes..(row + 1) * classes)
                    .unwrap_or_default();
                out.push((i, p.to_vec()));
            }
        }
        out
    };
    let parts = on_threads(vec![model.clone(); threads], run);
    let mut probs = vec![Vec::new(); tokens.len()];
    for (i, p) in parts.into_iter().flatten() {
        probs[i] = p;
    }
    probs
}

/// The fraction of `probs` whose most likely class equals the label.
pub fn accuracy(probs: &[Vec<f32>], labels: &[usize]) -> f64 {
    let correct = probs
        .iter()
        .zip(labels)
        .filter(|(p, l)| argmax(p) == **l)
        .count();
    correct as f64 / labels.len().max(1) as f64
}
