//! Several adapters on one base: named adapters, switching, mixed batches, PEFT's
//! weighted combinations (golden files from `scripts/peft_golden.py write-weighted`), and
//! saving several adapters as PEFT lays them out.

use std::fs;
use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use burn_lora::{
    Combination, Error, LoraConfig, PeftOptions, active_adapters, adapters, add_adapter,
    add_weighted_adapter, delete_adapter, list_adapters, load_adapter_with, merge_adapters,
    param_report, save_adapter, set_active_adapters, set_adapters_enabled, with_adapter_names,
    with_adapter_names_flat,
};
use safetensors::SafeTensors;

use crate::common::{FastTiny, SetFactors, Tiny, assert_close, perturb, read, scratch, tensor};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn config(rank: usize) -> LoraConfig {
    LoraConfig::new()
        .with_rank(rank)
        .with_alpha(2.0 * rank as f64)
        .with_target_modules(vec!["query".into(), "value".into()])
}

/// A factored tiny model with adapters `a` (rank 2), `b` (rank 3, on query only) and `d`
/// (DoRA), each with random factors.
fn three(device: &Device) -> FastTiny {
    three_on(Tiny::new(8, 2, device).fast(), device)
}

/// [`three`] on `model`. (The tests of a binary share the device's generator, so a seed
/// does not fix a model: tests that need the same base again keep it.)
fn three_on(model: FastTiny, device: &Device) -> FastTiny {
    let model = add_adapter(model, "a", &config(2)).unwrap();
    let b = config(3).with_target_modules(vec!["query".into()]);
    let model = add_adapter(model, "b", &b).unwrap();
    let model = add_adapter(model, "d", &config(2).with_use_dora(true)).unwrap();
    perturb(model, true, device)
}

fn with_active(model: &FastTiny, names: &[&str]) -> FastTiny {
    set_active_adapters(model.clone(), names).unwrap()
}

#[test]
fn adapters_stay_independent() {
    let device = Device::default();
    let model = three(&device);
    assert_eq!(list_adapters(&model), ["a", "b", "d"]);
    // The first adapter is active; the later ones were added inactive and frozen.
    assert_eq!(active_adapters(&model), ["a"]);
    let a_only = 2 * (2 * 8 + 2 * 8);
    assert_eq!(param_report(&model).trainable, a_only);
    let x = Tensor::<2>::random([4, 8], Distribution::Default, &device);
    let out = |m: &FastTiny| m.forward(x.clone()).into_data();

    let only_b = with_active(&model, &["b"]);
    assert_eq!(
        param_report(&only_b).trainable,
        3 * 8 + 3 * 8,
        "only b trains"
    );
    // Changing b's factors leaves what a computes bit for bit alone, and the reverse.
    let b_changed = only_b.clone().map(&mut SetFactors {
        adapter: "b".into(),
        a: Tensor::random([8, 3], Distribution::Default, &device),
        b: Tensor::random([3, 8], Distribution::Default, &device),
        magnitude: None,
        names: Vec::new(),
    });
    assert_eq!(out(&with_active(&b_changed, &["a"])), out(&model));
    assert_ne!(out(&b_changed), out(&only_b));

    // Active together, their updates add: (a + b) - base = (a - base) + (b - base).
    let base = out(&set_adapters_enabled(model.clone(), false));
    let both = with_active(&model, &["a", "b"]);
    assert_eq!(param_report(&both).trainable, a_only + 3 * 8 + 3 * 8);
    // Compared on one linear: the model's tanh is not linear.
    let q = |m: &FastTiny| m.attn.query.forward(x.clone());
    let q_base = q(&set_adapters_enabled(model.clone(), false));
    assert_close(
        "updates add",
        q(&both).into_data(),
        (q(&model) + q(&only_b) - q_base).into_data(),
    );

    // Deleting one frees it everywhere and leaves the others as they were.
    let without_b = delete_adapter(model.clone(), "b").unwrap();
    assert_eq!(list_adapters(&without_b), ["a", "d"]);
    assert_eq!(out(&without_b), out(&model));
    let none = delete_adapter(delete_adapter(without_b, "a").unwrap(), "d").unwrap();
    assert!(adapters(&none).is_empty());
    assert_eq!(out(&none), base);
    assert!(none.attn.query.adapter().is_none());
    // The last deletion leaves a plain model: no holder on any weight.
    assert!(
        none.attn
            .query
            .weight
            .reparameterization::<burn_lora::Adapter>()
            .is_none()
    );

    // Names are checked.
    assert!(matches!(
        add_adapter(model.clone(), "a", &config(2)),
        Err(Error::AdapterExists { .. })
    ));
    assert!(matches!(
        add_adapter(model.clone(), "__base__", &config(2)),
        Err(Error::InvalidAdapterName { .. })
    ));
    let err = set_active_adapters(model.clone(), &["zz"]).unwrap_err();
    assert!(
        err.to_string().contains("zz") && err.to_string().contains("a, b, d"),
        "{err}"
    );
    assert!(matches!(
        delete_adapter(model, "zz"),
        Err(Error::UnknownAdapter { .. })
    ));
}

#[test]
fn a_mixed_batch_equals_the_separate_runs() {
    let device = Device::default();
    let model = three(&device);
    let names = ["a", "__base__", "d", "b", "a", "d"];
    let x = Tensor::<2>::random([names.len(), 8], Distribution::Default, &device);
    let mixed = with_adapter_names(&model, &names, || model.forward(x.clone())).unwrap();
    let base = set_adapters_enabled(model.clone(), false);
    for (i, name) in names.iter().enumerate() {
        let alone = match *name {
            "__base__" => &base,
            name => &with_active(&model, &[name]),
        };
        let row = x.clone().narrow(0, i, 1);
        assert_close(
            &format!("example {i} ({name})"),
            mixed.clone().narrow(0, i, 1).into_data(),
            alone.forward(row).into_data(),
        );
    }
    // Unknown names, a wrong count, a merged model and the dense path are errors.
    let err = with_adapter_names(&model, &["a", "zz"], || ()).unwrap_err();
    assert!(matches!(err, Error::UnknownAdapter { .. }), "{err}");
    // A forward pass on another thread never sees the names.
    let err = with_adapter_names(&model, &names, || {
        std::thread::scope(|s| s.spawn(|| model.forward(x.clone())).join().unwrap())
    })
    .unwrap_err();
    assert!(matches!(err, Error::MixedBatchUnrouted), "{err}");
    let err = with_adapter_names(&model, &["a", "b"], || model.forward(x.clone())).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MixedBatchSize {
                found: 6,
                expected: 2
            }
        ),
        "{err}"
    );
    let merged = merge_adapters(model.clone()).unwrap();
    let err = with_adapter_names(&merged, &names, || ()).unwrap_err();
    assert!(matches!(err, Error::MergedAdapters), "{err}");
    let dense = add_adapter(Tiny::new(8, 2, &device), "a", &config(2)).unwrap();
    let err = with_adapter_names(&dense, &["a"; 6], || dense.forward(x.clone())).unwrap_err();
    assert!(matches!(err, Error::MixedBatchDense), "{err}");
}

#[test]
fn a_mixed_batch_whose_layers_partly_run_on_another_thread_is_an_error() {
    // Before: the query ran routed here, the value on a worker with the active adapter for
    // every example, and the call returned Ok with rows from the wrong adapter.
    let device = Device::default();
    let model = three(&device);
    let names = ["a", "__base__", "b"];
    let x = Tensor::<2>::random([names.len(), 8], Distribution::Default, &device);
    let err = with_adapter_names(&model, &names, || {
        let attn = &model.attn;
        let query = attn.query.forward(x.clone());
        let value =
            std::thread::scope(|s| s.spawn(|| attn.value.forward(x.clone())).join().unwrap());
        query + value
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::MixedBatchOffThread { layers: 1 }),
        "{err}"
    );
    // Nothing is left registered: the same model on another thread afterwards is plain.
    std::thread::scope(|s| s.spawn(|| model.forward(x.clone())).join().unwrap());
    let ok = with_adapter_names(&model, &names, || model.forward(x.clone()));
    assert!(ok.is_ok());
}

#[test]
fn a_flattened_batch_routes_each_examples_rows_when_told_how_many() {
    // Before: a [batch·seq, d] input was a MixedBatchSize error, with no way to say what
    // its rows were.
    let device = Device::default();
    let model = three(&device);
    let names = ["a", "__base__", "d", "b"];
    let seq = 3;
    let x = Tensor::<2>::random([names.len() * seq, 8], Distribution::Default, &device);
    let err = with_adapter_names(&model, &names, || model.forward(x.clone())).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MixedBatchSize {
                found: 12,
                expected: 4
            }
        ),
        "{err}"
    );
    let mixed = with_adapter_names_flat(&model, &names, seq, || model.forward(x.clone())).unwrap();
    let base = set_adapters_enabled(model.clone(), false);
    for (i, name) in names.iter().enumerate() {
        let alone = match *name {
            "__base__" => &base,
            name => &with_active(&model, &[name]),
        };
        let rows = x.clone().narrow(0, i * seq, seq);
        assert_close(
            &format!("example {i} ({name})"),
            mixed.clone().narrow(0, i * seq, seq).into_data(),
            alone.forward(rows).into_data(),
        );
    }
    // Inputs whose leading dimension is the batch still route by it.
    let y = Tensor::<2>::random([names.len(), 8], Distribution::Default, &device);
    let flat = with_adapter_names_flat(&model, &names, seq, || model.forward(y.clone())).unwrap();
    let plain = with_adapter_names(&model, &names, || model.forward(y.clone())).unwrap();
    assert_eq!(flat.into_data(), plain.into_data());
}

#[test]
fn weighted_combinations_match_peft() {
    let device = Device::default();
    let dir = Path::new(FIXTURES).join("peft_tiny");
    let weighted = dir.join("weighted");
    let mut model = Tiny::from_torch(&dir.join("base.safetensors"), &device).fast();
    for name in ["first", "second", "third"] {
        let options = PeftOptions::new().with_adapter_name(name);
        model = load_adapter_with(model, weighted.join(name), &options).unwrap();
    }
    let model = add_weighted_adapter(
        model,
        &[("first", 0.7), ("second", -0.4)],
        "lin",
        Combination::Linear,
    )
    .unwrap();
    let model = add_weighted_adapter(
        model,
        &[("first", 0.6), ("third", 1.5)],
        "cat",
        Combination::Cat,
    )
    .unwrap();
    let bytes = fs::read(dir.join("io_weighted.safetensors")).unwrap();
    let io = SafeTensors::deserialize(&bytes).unwrap();
    let x = tensor::<2>(&io, "x", &device);
    for name in ["first", "second", "third", "lin", "cat"] {
        let out = with_active(&model, &[name]).forward(x.clone());
        assert_close(name, out.into_data(), read(&io, &format!("out_{name}")));
    }
    // The combined factors are PEFT's, key for key.
    let saved = scratch("multi", "weighted");
    save_adapter(&model, &saved).unwrap();
    for name in ["lin", "cat"] {
        let ours = fs::read(saved.join(name).join("adapter_model.safetensors")).unwrap();
        let ours = SafeTensors::deserialize(&ours).unwrap();
        let theirs = fs::read(weighted.join(name).join("adapter_model.safetensors")).unwrap();
        let theirs = SafeTensors::deserialize(&theirs).unwrap();
        let mut keys = theirs.names();
        keys.sort();
        let mut our_keys = ours.names();
        our_keys.sort();
        assert_eq!(our_keys, keys, "{name}");
        for key in keys {
            assert_close(
                &format!("{name} {key}"),
                read(&ours, key),
                read(&theirs, key),
            );
        }
    }
    // Linear needs one rank.
    let err = add_weighted_adapter(
        model,
        &[("first", 1.0), ("third", 1.0)],
        "bad",
        Combination::Linear,
    )
    .unwrap_err();
    assert!(err.to_string().contains("rank"), "{err}");
}

#[test]
fn several_adapters_save_as_peft_lays_them_out_and_load_back() {
    let device = Device::default();
    let base = Tiny::new(8, 2, &device).fast();
    let model = three_on(base.clone(), &device);
    let model = add_adapter(model, "default", &config(1)).unwrap();
    let model = perturb(model, true, &device);
    let dir = scratch("multi", "saved");
    save_adapter(&model, &dir).unwrap();
    // `default` in the directory itself, the others in subdirectories, as PEFT writes them.
    assert!(dir.join("adapter_config.json").exists());
    for name in ["a", "b", "d"] {
        assert!(
            dir.join(name).join("adapter_model.safetensors").exists(),
            "{name}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("d/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(json["use_dora"], true);
    assert_eq!(json["r"], 2);
    let x = Tensor::<2>::random([3, 8], Distribution::Default, &device);
    for name in ["a", "b", "d", "default"] {
        let path = match name {
            "default" => dir.clone(),
            name => dir.join(name),
        };
        let options = PeftOptions::new().with_adapter_name(name);
        let loaded = load_adapter_with(base.clone(), &path, &options).unwrap();
        assert_eq!(list_adapters(&loaded), [name]);
        assert_close(
            name,
            loaded.forward(x.clone()).into_data(),
            with_active(&model, &[name]).forward(x.clone()).into_data(),
        );
    }
}

/// Four 1024 × 1024 factored linears: 16 MB of base weights, where an adapter of rank 128
/// on each holds 4 MB.
#[derive(Module, Debug)]
struct Wide {
    layers: Vec<burn_lora::nn::Linear>,
}

impl Wide {
    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        for layer in &self.layers {
            x = layer.forward(x).tanh();
        }
        x
    }
}

/// `(VmRSS, VmHWM)` of this process, in MB.
fn rss() -> (f64, f64) {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Hot swap: loading an adapter beside a served one, answering a batch with it, and
/// deleting it, 20 times, keeps the process's memory flat: nothing of the base is rebuilt,
/// and a deleted adapter's memory is reused. Measured in a process of its own (this test
/// binary running only `hot_swap_child`), so that other tests' memory does not count.
#[cfg(target_os = "linux")]
#[test]
fn hot_swap_keeps_memory_flat() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "multi::hot_swap_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("BURN_LORA_HOT_SWAP_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("hot swap:"))
        .unwrap_or_else(|| panic!("the child reported nothing: {stdout}"));
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [first_rss, last_rss, first_peak, last_peak, adapter_mb] = numbers[..] else {
        panic!("unexpected report: {line}");
    };
    // Twenty adapters kept alive would add 19 × 4 MB; allow less than one.
    assert!(last_rss - first_rss < adapter_mb, "{line}");
    assert!(last_peak - first_peak < adapter_mb, "{line}");
}

#[test]
#[ignore = "run by hot_swap_keeps_memory_flat in a process of its own"]
fn hot_swap_child() {
    if std::env::var_os("BURN_LORA_HOT_SWAP_CHILD").is_none() {
        return;
    }
    let device = Device::default();
    let layer = || burn_lora::nn::LinearConfig::new(1024, 1024).init(&device);
    let base = Wide {
        layers: (0..4).map(|_| layer()).collect(),
    };
    let config = LoraConfig::new()
        .with_rank(128)
        .with_target_regex(Some(r"layers\.\d".into()));
    let dir = scratch("multi", "hot_swap");
    let trained = perturb(
        burn_lora::apply_lora(base.clone(), &config).unwrap(),
        true,
        &device,
    );
    save_adapter(&trained, &dir).unwrap();
    drop(trained);
    let adapter_mb = 4.0 * 2.0 * 1024.0 * 128.0 * 4.0 / 1e6 * (1e6 / 1048576.0);
    let served = PeftOptions::new().with_adapter_name("served");
    let mut model = load_adapter_with(base, &dir, &served).unwrap();
    let x = Tensor::<2>::random([8, 1024], Distribution::Default, &device);
    let mut seen = Vec::new();
    for i in 0..20 {
        let name = format!("swap{i}");
        let options = PeftOptions::new().with_adapter_name(&name);
        model = load_adapter_with(model, &dir, &options).unwrap();
        let names = ["served", name.as_str()].repeat(4);
        let y = with_adapter_names(&model, &names, || model.forward(x.clone())).unwrap();
        assert_eq!(y.dims(), [8, 1024]);
        model = delete_adapter(model, &name).unwrap();
        seen.push(rss());
    }
    assert_eq!(list_adapters(&model), ["served"]);
    println!(
        "hot swap: RSS {:.1} MB after the first swap, {:.1} MB after the last; peak {:.1} MB then {:.1} MB; one adapter {adapter_mb:.1} MB",
        seen[0].0, seen[19].0, seen[0].1, seen[19].1
    );
}
