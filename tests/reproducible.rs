//! Reproducibility: the same seed, inputs and backend give the same accuracies, loss
//! curves and adapter bytes. This test has its own binary because a Burn device's random
//! generator is shared by every thread of a process: tests running beside it in the same
//! process would draw from it too.

mod common;

use std::fs;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use burn_lora::LoraConfig;
use burn_lora::model::Pooling;
use burn_lora::train::FinetuneMode;
use burn_lora::train::sentiment::{
    BaseModel, Loaded, SentimentOptions, Trained, load_classifier, run_sentiment,
};
use common::{scratch, tiny_base, write_tsv};

fn options(dir: &Path, modes: Vec<FinetuneMode>) -> SentimentOptions {
    tiny_base(dir);
    write_tsv(&dir.join("train.tsv"), 4);
    write_tsv(&dir.join("test.tsv"), 1);
    SentimentOptions {
        dataset: "tiny".into(),
        train_file: dir.join("train.tsv"),
        test_file: dir.join("test.tsv"),
        eval_files: vec![],
        base: BaseModel::Gpt(dir.to_path_buf()),
        max_len: None,
        tokenizer: dir.join("tokenizer.json"),
        modes,
        lr: Some(1e-2),
        epochs: 4,
        batch_size: 8,
        seed: 1,
        max_train: None,
        out: dir.join("out"),
        pooling: Pooling::LastToken,
        overwrite: true,
    }
}

fn lora() -> LoraConfig {
    LoraConfig::new()
        .with_rank(2)
        .with_alpha(4.0)
        .with_modules_to_save(vec!["head".into()])
}

/// Every float parameter's values.
fn values<M: Module>(model: &M) -> Vec<(String, TensorData)> {
    struct Collect(Vec<(String, TensorData)>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push((param.id.to_string(), param.val().into_data()));
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

#[test]
fn the_same_seed_reproduces_every_figure_and_byte() {
    let dir = scratch("sentiment_job", "reproduce");
    let modes = vec![
        FinetuneMode::Full,
        FinetuneMode::Lora(lora().with_dropout(0.1)),
        FinetuneMode::HeadOnly,
    ];
    let mut options = options(&dir, modes);
    options.epochs = 2;
    let mut run = |seed: u64, out: &str| {
        options.seed = seed;
        options.out = dir.join(out);
        let (metrics, _) = run_sentiment(&options, &Device::default()).unwrap();
        let read = |name: &str| fs::read(dir.join(out).join(name)).unwrap();
        let accuracies: Vec<f64> = metrics.runs.iter().map(|r| r.test_accuracy).collect();
        // Burnpack files also hold each parameter's random id, so the full checkpoint is
        // compared by its values; the PEFT adapter files must match byte for byte.
        let checkpoint = Trained::Checkpoint(dir.join(out).join("full_model.bpk"));
        let base = BaseModel::Gpt(dir.clone());
        let Loaded::Gpt(full, _, _) =
            load_classifier(&base, &checkpoint, &Device::default()).unwrap()
        else {
            panic!("a GPT base loads a GPT classifier")
        };
        let full: Vec<TensorData> = values(&full).into_iter().map(|(_, v)| v).collect();
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
