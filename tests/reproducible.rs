//! Reproducibility: the same seed, inputs and backend give the same accuracies, loss
//! curves and adapter bytes. This test has its own binary because a Burn device's random
//! generator is shared by every thread of a process: tests running beside it in the same
//! process would draw from it too.

mod common;

use std::fs;

use burn::tensor::{Device, TensorData};
use burn_lora_demo::train::FinetuneMode;
use burn_lora_demo::train::sentiment::{
    BaseModel, LoadedModel, Trained, load_classifier, run_sentiment,
};
use common::{param_values, scratch, tiny_job, tiny_lora};

#[test]
fn the_same_seed_reproduces_every_figure_and_byte() {
    let dir = scratch("sentiment_job", "reproduce");
    let modes = vec![
        FinetuneMode::Full,
        FinetuneMode::Lora(tiny_lora().with_dropout(0.1)),
        FinetuneMode::HeadOnly,
    ];
    let mut options = tiny_job(&dir, modes);
    options.epochs = 2;
    let mut run = |seed: u64, out: &str| {
        options.seed = seed;
        options.out = dir.join(out);
        let (metrics, _) = run_sentiment(&options, &[Device::default()]).unwrap();
        let read = |name: &str| fs::read(dir.join(out).join(name)).unwrap();
        let accuracies: Vec<f64> = metrics.runs.iter().map(|r| r.test_accuracy).collect();
        // Burnpack files also hold each parameter's random id, so the full checkpoint is
        // compared by its values; the PEFT adapter files must match byte for byte.
        let checkpoint = Trained::Checkpoint(dir.join(out).join("full_model.bpk"));
        let base = BaseModel::Gpt(dir.clone());
        let LoadedModel::Gpt(full, _) =
            load_classifier(&base, &checkpoint, None, &Device::default())
                .unwrap()
                .model
        else {
            panic!("a GPT base loads a GPT classifier")
        };
        let full: Vec<TensorData> = param_values(&full).into_iter().map(|(_, v)| v).collect();
        (
            accuracies,
            read("loss.csv"),
            read("accuracy.csv"),
            read("lora_adapter/adapter_model.safetensors"),
            read("lora_adapter/adapter_config.json"),
            full,
        )
    };
    let first = run(7, "a");
    let second = run(7, "b");
    assert!(first.1.len() > 100, "a loss curve was written");
    assert_eq!(first.0, second.0, "test accuracies");
    assert!(first.1 == second.1, "loss.csv differs");
    assert!(first.2 == second.2, "accuracy.csv differs");
    assert!(first.3 == second.3, "adapter weights differ");
    assert!(first.4 == second.4, "adapter config differs");
    assert!(first.5 == second.5, "full checkpoint values differ");
    // Not vacuous: another seed trains differently.
    let other = run(8, "c");
    assert!(first.1 != other.1, "another seed gives another loss curve");
    assert!(first.3 != other.3, "and another adapter");
}
