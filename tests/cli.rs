//! The examples as a user runs them: each bad input gives a one-paragraph error that names
//! the file, line, key or shape, a non-zero exit code, and no panic or backtrace.
//!
//! `cargo test` builds the examples before it runs this file; the binaries are found next to
//! the test binary, under `target/<profile>/examples/`.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use common::{scratch, tiny_base, tiny_base_with, write_tsv};

/// The built example `name`.
fn example(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing; run these tests with `cargo test`, which builds the examples",
        path.display()
    );
    path
}

/// Runs an example from the crate root, with `stdin` as its standard input.
fn run_with_stdin(name: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(example(name))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn run(name: &str, args: &[&str]) -> Output {
    run_with_stdin(name, args, "")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts a clean failure whose message contains every one of `needles`; returns stderr.
#[track_caller]
fn fails(output: Output, needles: &[&str]) -> String {
    let stderr = text(&output.stderr);
    assert!(
        !output.status.success(),
        "expected a failure, got success.\nstdout: {}\nstderr: {stderr}",
        text(&output.stdout)
    );
    assert_eq!(output.status.code(), Some(1), "exit code; stderr: {stderr}");
    for bad in ["panicked at", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "`{bad}` in stderr: {stderr}");
    }
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "`{needle}` not in stderr: {stderr}"
        );
    }
    assert!(
        stderr.trim_end().lines().count() <= 6,
        "more than a paragraph: {stderr}"
    );
    stderr
}

#[track_caller]
fn succeeds(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A tiny base, its data, and one finished LoRA + full run, built once for every test.
struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn base(&self) -> PathBuf {
        self.dir.join("base")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    fn adapter(&self) -> PathBuf {
        self.dir.join("run/lora_adapter")
    }
    /// A new output directory for each call, so that no two tests (and no two runs of one
    /// test) share one.
    fn fresh_out(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!("out-{n}"))
    }

    /// The sentiment example on the tiny base: quick defaults, each replaced by the same
    /// flag in `extra`; without `--out`, a fresh output directory.
    fn sentiment(&self, extra: &[&str]) -> Output {
        let defaults = [
            ("--base", self.base()),
            ("--data-file", self.file("train.tsv")),
            ("--test-file", self.file("test.tsv")),
            ("--epochs", "1".into()),
            ("--batch-size", "8".into()),
            ("--out", self.fresh_out()),
        ];
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        for (flag, value) in defaults {
            let resumed = flag == "--out" && extra.contains(&"--resume");
            if !extra.contains(&flag) && !resumed {
                args.extend([flag.to_string(), value.display().to_string()]);
            }
        }
        if !extra.contains(&"--no-overwrite") {
            args.push("--overwrite".into());
        } else {
            args.retain(|a| a != "--no-overwrite");
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("sentiment", &args)
    }
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = scratch("cli", "setup");
        fs::create_dir_all(dir.join("base")).unwrap();
        tiny_base(&dir.join("base"));
        fs::create_dir_all(dir.join("wide_base")).unwrap();
        tiny_base_with(&dir.join("wide_base"), 24);
        write_tsv(&dir.join("train.tsv"), 4);
        write_tsv(&dir.join("test.tsv"), 1);
        let setup = Setup { dir };
        let out = setup.dir.join("run");
        let output = setup.sentiment(&["--modes", "lora,full", "--out", s(&out)]);
        succeeds(&output);
        setup
    })
}

// ---- sentiment: data files ----

#[test]
fn sentiment_missing_file_and_directory() {
    let setup = setup();
    let missing = setup.file("no_such.tsv");
    fails(
        setup.sentiment(&["--data-file", s(&missing)]),
        &[s(&missing), "No such file"],
    );
    fails(
        setup.sentiment(&["--data-file", s(&setup.dir)]),
        &[s(&setup.dir), "is a directory"],
    );
    fails(
        setup.sentiment(&["--eval-file", s(&missing)]),
        &[s(&missing)],
    );
}

#[test]
fn sentiment_empty_and_single_label_datasets() {
    let setup = setup();
    let dir = scratch("cli", "empty");
    let empty = dir.join("empty.tsv");
    fs::write(&empty, "").unwrap();
    fails(
        setup.sentiment(&["--data-file", s(&empty)]),
        &["empty.tsv", "holds no examples"],
    );
    let one = dir.join("one_label.tsv");
    fs::write(&one, "1\tgood\n1\tgreat fun\n1\tfun\n").unwrap();
    fails(
        setup.sentiment(&["--data-file", s(&one)]),
        &["one_label.tsv", "only one label"],
    );
}

#[test]
fn sentiment_malformed_lines_name_file_and_line() {
    let setup = setup();
    let dir = scratch("cli", "malformed");
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "label.tsv",
            b"1\tgood\n0\tbad\n \tmeh\n",
            "label.tsv:3: the label is empty",
        ),
        (
            "utf8.tsv",
            b"1\tgood\n0\tb\xffd\n",
            "utf8.tsv:2: invalid UTF-8",
        ),
        (
            "notext.tsv",
            b"1\t  \n0\tbad\n",
            "notext.tsv:1: the line has a label but no text",
        ),
        ("notab.tsv", b"1\tgood\n0 bad\n", "notab.tsv:2: expected"),
    ];
    for (name, bytes, message) in cases {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        fails(setup.sentiment(&["--data-file", s(&path)]), &[message]);
        // The same checks guard the test and evaluation files.
        fails(setup.sentiment(&["--eval-file", s(&path)]), &[message]);
    }
    // A label the training file never had is an error in the test and evaluation files.
    let unseen = dir.join("unseen.tsv");
    fs::write(&unseen, "1\tgood\n0\tbad\nneutral\tmeh\n").unwrap();
    for flag in ["--test-file", "--eval-file"] {
        fails(
            setup.sentiment(&[flag, s(&unseen)]),
            &["unseen.tsv:3: label `neutral` never occurs in the training data (its labels: 0, 1)"],
        );
    }
}

#[test]
fn sentiment_truncates_long_texts_and_reports_how_many() {
    let setup = setup();
    let dir = scratch("cli", "long");
    let test = dir.join("long_test.tsv");
    let long = "good ".repeat(40);
    fs::write(&test, format!("1\t{long}\n0\tbad\n0\t{long} bad\n1\tfun\n")).unwrap();
    let out = dir.join("out");
    let stdout =
        succeeds(&setup.sentiment(&["--modes", "head", "--test-file", s(&test), "--out", s(&out)]));
    assert!(
        stdout.contains("2 texts longer than 16 tokens truncated"),
        "{stdout}"
    );
    let details: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("details.json")).unwrap()).unwrap();
    assert_eq!(details["truncated_texts"], 2);
}

// ---- sentiment: flags ----

#[test]
fn sentiment_invalid_lora_and_training_flags() {
    let setup = setup();
    fails(setup.sentiment(&["--rank", "0"]), &["rank"]);
    fails(setup.sentiment(&["--alpha", "-2"]), &["alpha", "-2"]);
    fails(setup.sentiment(&["--dropout", "1.0"]), &["dropout", "1"]);
    fails(setup.sentiment(&["--batch-size", "0"]), &["--batch-size"]);
    fails(
        setup.sentiment(&["--modes", "fast"]),
        &["unknown mode `fast`"],
    );
    fails(
        setup.sentiment(&["--rank", "64", "--modes", "lora"]),
        &["rank 64"],
    );
}

#[test]
fn sentiment_unknown_target_lists_the_available_names() {
    let setup = setup();
    fails(
        setup.sentiment(&["--targets", "qkv", "--modes", "lora"]),
        &["qkv", "query", "value", "key"],
    );
}

#[test]
fn sentiment_refuses_to_overwrite_a_finished_run() {
    let setup = setup();
    let out = setup.dir.join("run");
    let before = fs::read(out.join("metrics.json")).unwrap();
    let base = setup.base();
    let output = run(
        "sentiment",
        &["--base", s(&base), "--modes", "head", "--out", s(&out)],
    );
    fails(output, &[s(&out), "already exists", "--overwrite"]);
    assert_eq!(fs::read(out.join("metrics.json")).unwrap(), before);
}

// ---- predict ----

#[test]
fn predict_merged_and_unmerged_answers_agree_in_json() {
    let setup = setup();
    let base = setup.base();
    let adapter = setup.adapter();
    let args = ["--base", s(&base), "--adapter", s(&adapter), "--json"];
    let texts = "good fun\nbad and dull\n\nawful 3\n";
    let plain = succeeds(&run_with_stdin("predict", &args, texts));
    let lines: Vec<serde_json::Value> = plain
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "blank lines are skipped: {plain}");
    assert_eq!(lines[1]["text"], "bad and dull");
    for line in &lines {
        let probs = line["probs"].as_array().unwrap();
        let (p0, p1) = (probs[0].as_f64().unwrap(), probs[1].as_f64().unwrap());
        assert!((p0 + p1 - 1.0).abs() < 1e-5, "{line}");
        // The class names are the training file's labels, recorded in labels.json.
        let class = u64::from(p1 > p0);
        assert_eq!(line["class"].as_u64().unwrap(), class);
        assert_eq!(line["label"], class.to_string());
    }
    let merged_args = [&args[..], &["--merge"]].concat();
    let merged = succeeds(&run_with_stdin("predict", &merged_args, texts));
    let labels = |out: &str| {
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["label"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(labels(&plain), labels(&merged));
}

#[test]
fn predict_missing_inputs() {
    let setup = setup();
    let base = setup.base();
    let missing = setup.file("no_adapter");
    fails(
        run(
            "predict",
            &["--base", s(&base), "--adapter", s(&missing), "good"],
        ),
        &[s(&missing), "adapter_config.json"],
    );
    fails(
        run(
            "predict",
            &["--base", s(&base), "--checkpoint", s(&setup.dir), "good"],
        ),
        &[s(&setup.dir)],
    );
    fails(
        run(
            "predict",
            &["--base", s(&missing), "--adapter", s(&setup.adapter())],
        ),
        &[s(&missing)],
    );
    fails(
        run("predict", &["--base", s(&base), "good"]),
        &["--adapter", "--checkpoint"],
    );
}

#[test]
fn predict_adapter_for_another_base_is_a_shape_error() {
    let setup = setup();
    let wide = setup.dir.join("wide_base");
    fails(
        run(
            "predict",
            &["--base", s(&wide), "--adapter", s(&setup.adapter()), "good"],
        ),
        &["adapter_model.safetensors", "lora_A", "shape"],
    );
    let checkpoint = setup.dir.join("run/full_model.bpk");
    fails(
        run(
            "predict",
            &["--base", s(&wide), "--checkpoint", s(&checkpoint), "good"],
        ),
        &["full_model.bpk"],
    );
}

/// A copy of the trained adapter with its config edited by `edit`.
fn edited_adapter(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let setup = setup();
    let dir = scratch("cli", name);
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        fs::copy(setup.adapter().join(file), dir.join(file)).unwrap();
    }
    let path = dir.join("adapter_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    fs::write(&path, config.to_string()).unwrap();
    dir
}

#[test]
fn predict_adapter_whose_targets_or_rank_disagree() {
    let setup = setup();
    let base = setup.base();
    let targets = edited_adapter("targets", |c| {
        c["target_modules"] = serde_json::json!(["q_proj", "v_proj"]);
    });
    fails(
        run(
            "predict",
            &["--base", s(&base), "--adapter", s(&targets), "good"],
        ),
        &["q_proj", "query"],
    );
    let rank = edited_adapter("rank", |c| c["r"] = serde_json::json!(4));
    fails(
        run(
            "predict",
            &["--base", s(&base), "--adapter", s(&rank), "good"],
        ),
        &["adapter_model.safetensors", "shape", "4"],
    );
}

#[test]
fn predict_truncated_safetensors() {
    let setup = setup();
    let base = setup.base();
    let dir = edited_adapter("truncated", |_| {});
    let weights = dir.join("adapter_model.safetensors");
    let bytes = fs::read(&weights).unwrap();
    fs::write(&weights, &bytes[..bytes.len() * 2 / 3]).unwrap();
    fails(
        run(
            "predict",
            &["--base", s(&base), "--adapter", s(&dir), "good"],
        ),
        &[s(&weights)],
    );
}

// ---- pretrain ----

#[test]
fn pretrain_bad_flags_and_inputs() {
    let dir = scratch("cli", "pretrain");
    let out = dir.join("base");
    let missing = dir.join("no_corpus.txt");
    fails(
        run(
            "pretrain",
            &[
                "--out",
                s(&out),
                "--corpus",
                s(&missing),
                "--max-steps",
                "1",
            ],
        ),
        &[s(&missing)],
    );
    fails(
        run("pretrain", &["--out", s(&out), "--batch-size", "0"]),
        &["--batch-size"],
    );
    fails(
        run(
            "pretrain",
            &["--out", s(&out), "--d-model", "30", "--heads", "4"],
        ),
        &["d_model 30", "n_heads 4"],
    );
    // The shipped base is never replaced by accident.
    fails(
        run("pretrain", &["--max-steps", "1"]),
        &["fixtures/base", "--overwrite"],
    );
}

// ---- interrupted runs ----

/// The two files of an adapter directory, or `None` when it is absent.
fn adapter_files(dir: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    let read = |name: &str| fs::read(dir.join(name)).ok();
    match (
        read("adapter_config.json"),
        read("adapter_model.safetensors"),
    ) {
        (Some(config), Some(weights)) => Some((config, weights)),
        (None, None) => None,
        (config, weights) => panic!(
            "half an adapter in {}: config {}, weights {}",
            dir.display(),
            config.is_some(),
            weights.is_some()
        ),
    }
}

/// The temporary files (`NAME.tmp`, see `burn_lora_demo::io::temp_path`) directly in `dir`.
/// Burn's own burnpack writer stages its file under a name of its own
/// (`NAME.tmp.PID-N.tmp`) inside ours; those are left out.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "tmp"))
        .filter(|p| !p.to_string_lossy().contains(".tmp."))
        .collect();
    found.sort();
    found
}

/// How long each atomic write of the job pauses between its temporary file and the rename,
/// under the test hook `BURN_LORA_DEMO_WRITE_PAUSE_MS` (see `burn_lora_demo::io`).
const WRITE_PAUSE_MS: &str = "400";

/// Starts the sentiment job with the write pause on, watches `out` for temporary files, and
/// kills the job `SIGKILL` while the `n`-th distinct one (counting from 0) is still there,
/// that is, in the middle of that write. Returns that file, or `None` when the job wrote
/// fewer than `n + 1` (it then ran to the end). With `n = usize::MAX` it only watches, and
/// returns every temporary file seen, in order, through `seen`.
fn kill_inside_write(
    args: &[String],
    out: &Path,
    n: usize,
    seen: &mut Vec<PathBuf>,
) -> Option<PathBuf> {
    let mut child = Command::new(example("sentiment"))
        .args(args)
        .env("BURN_LORA_DEMO_WRITE_PAUSE_MS", WRITE_PAUSE_MS)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    seen.clear();
    loop {
        for tmp in temp_files(out) {
            if !seen.contains(&tmp) {
                seen.push(tmp);
            }
        }
        if let Some(target) = seen.get(n).cloned() {
            let _ = child.kill();
            child.wait().unwrap();
            return Some(target);
        }
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "the job failed: {status}");
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Kills the sentiment job inside each of its file writes while it writes over a finished
/// run, and checks that every output left behind is either absent or a whole file from one
/// run: the adapter directory is byte for byte the adapter of the old run or of the new one
/// (never the weights of one beside the config of the other), `metrics.json` parses, and
/// the full checkpoint loads.
///
/// Each kill is proved to have landed mid-write: the job runs with the test hook that
/// pauses every atomic write between its temporary file and the rename, the test kills it
/// while the temporary file it waited for exists, and after the kill that temporary file
/// is still there (a write that had finished would have renamed it away) while the file it
/// was replacing is still the old run's.
///
/// Slow: `cargo test -- --include-ignored` runs it, as `.ci/run` does.
#[test]
#[ignore = "slow stress test (kills inside each write, 20 s); run with --include-ignored"]
fn an_interrupted_run_never_leaves_a_corrupt_output() {
    let setup = setup();
    let dir = scratch("cli", "interrupted");
    let flags = |alpha: &'static str, seed: &'static str, out: &Path| {
        let mut args: Vec<String> = [
            "--base",
            s(&setup.base()),
            "--data-file",
            s(&setup.file("train.tsv")),
            "--test-file",
            s(&setup.file("test.tsv")),
            "--modes",
            "lora,full",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--alpha",
            alpha,
            "--seed",
            seed,
            "--overwrite",
            "--out",
        ]
        .map(String::from)
        .to_vec();
        args.push(s(out).to_string());
        args
    };
    // The two complete runs the interrupted ones alternate between.
    let mut complete = Vec::new();
    for (alpha, seed, name) in [("16", "1", "one"), ("8", "2", "two")] {
        let out = dir.join(name);
        let args = flags(alpha, seed, &out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        succeeds(&run("sentiment", &args));
        complete.push(adapter_files(&out.join("lora_adapter")).unwrap());
    }
    assert_ne!(complete[0].0, complete[1].0, "the two configs differ");

    // Each attempt kills run "two" while it writes over a whole run "one".
    let out = dir.join("target");
    let whole_one = || {
        let args = flags("16", "1", &out);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        succeeds(&run("sentiment", &args));
    };
    // The writes of run "two", in order, learned by watching one to its end.
    whole_one();
    let mut writes = Vec::new();
    assert!(kill_inside_write(&flags("8", "2", &out), &out, usize::MAX, &mut writes).is_none());
    let names: Vec<String> = writes
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    println!("the job's writes: {names:?}");
    for expected in ["job.json.tmp", "full_model.bpk.tmp", "metrics.json.tmp"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not among {names:?}"
        );
    }

    let mut seen = Vec::new();
    for (attempt, name) in names.iter().enumerate() {
        whole_one();
        let old_metrics = fs::read(out.join("metrics.json")).unwrap();
        let target = kill_inside_write(&flags("8", "2", &out), &out, attempt, &mut seen)
            .unwrap_or_else(|| panic!("attempt {attempt}: the job finished before writing {name}"));
        assert_eq!(target.file_name().unwrap().to_string_lossy(), *name);
        assert!(
            target.exists(),
            "attempt {attempt}: the kill did not land inside the write of {name}"
        );
        if name == "metrics.json.tmp" {
            assert_eq!(
                fs::read(out.join("metrics.json")).unwrap(),
                old_metrics,
                "attempt {attempt}: metrics.json is not the old run's while the new one was being written"
            );
        }
        if let Some(files) = adapter_files(&out.join("lora_adapter")) {
            assert!(
                complete.contains(&files),
                "attempt {attempt}: the adapter matches neither complete run"
            );
        }
        if let Ok(text) = fs::read_to_string(out.join("metrics.json")) {
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("attempt {attempt}: metrics.json: {e}"));
            assert_eq!(json["runs"].as_array().unwrap().len(), 2);
        }
        let checkpoint = out.join("full_model.bpk");
        if checkpoint.exists() {
            let output = run(
                "predict",
                &[
                    "--base",
                    s(&setup.base()),
                    "--checkpoint",
                    s(&checkpoint),
                    "good",
                ],
            );
            succeeds(&output);
        }
        println!("attempt {attempt}: killed inside the write of {name}");
    }
}

#[test]
fn predict_with_a_hugging_face_base_and_a_peft_adapter_gives_peft_probabilities() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_tiny");
    let base = format!("hf:{}", root.display());
    let adapter = root.join("peft_adapter");
    let texts = ["a gem of a film", "dull and far too long", "good"];
    let mut args = vec![
        "--base",
        &base,
        "--adapter",
        s(&adapter),
        "--pooling",
        "cls",
        "--json",
    ];
    args.extend(texts);
    let stdout = succeeds(&run("predict", &args));
    let bytes = fs::read(root.join("golden.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits: Vec<f32> = common::read(&golden, "peft_logits").try_to_vec().unwrap();
    for (row, line) in stdout.lines().enumerate() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(json["text"], texts[row]);
        let (a, b) = (logits[2 * row], logits[2 * row + 1]);
        let p1 = 1.0 / (1.0 + (a - b).exp());
        let got = json["probs"][1].as_f64().unwrap() as f32;
        assert!((got - p1).abs() < 1e-4, "row {row}: {got} vs PEFT {p1}");
    }
    // A GPT-only pooling on a BERT base is a usage error.
    fails(
        run(
            "predict",
            &[
                "--base",
                &base,
                "--adapter",
                s(&adapter),
                "--pooling",
                "last",
                "x",
            ],
        ),
        &["--pooling", "mean or cls"],
    );
}

#[test]
fn predict_follows_a_sequence_classifier_checkpoint_and_its_peft_adapter_with_no_flags() {
    // A BertForSequenceClassification checkpoint naming three classes, and PEFT's SEQ_CLS
    // adapter on it (scripts/hf_golden.py): no --pooling, no labels.json.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_seqcls");
    let base = format!("hf:{}", root.display());
    let adapter = root.join("peft_adapter");
    let texts = ["a gem of a film", "dull and far too long", "good"];
    let mut args = vec!["--base", &base, "--adapter", s(&adapter), "--json"];
    args.extend(texts);
    let output = run("predict", &args);
    let stdout = succeeds(&output);
    assert!(
        text(&output.stderr).contains("pooling cls"),
        "{}",
        text(&output.stderr)
    );
    let bytes = fs::read(root.join("golden.safetensors")).unwrap();
    let golden = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want: Vec<f32> = common::read(&golden, "peft_probs").try_to_vec().unwrap();
    let names = ["negative", "neutral", "positive"];
    for (row, line) in stdout.lines().enumerate() {
        let json: serde_json::Value = serde_json::from_str(line).unwrap();
        let got: Vec<f32> = json["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap() as f32)
            .collect();
        let want = &want[3 * row..3 * row + 3];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "row {row}: {got:?} vs PEFT {want:?}");
        }
        let best = (0..3).max_by(|&a, &b| want[a].total_cmp(&want[b])).unwrap();
        assert_eq!(json["label"], names[best], "{json}");
    }
    assert_eq!(stdout.lines().count(), 3);
    // --pooling still overrides the checkpoint (no labels.json to contradict), and the
    // mean head answers differently.
    let mean = succeeds(&run(
        "predict",
        &[
            "--base",
            &base,
            "--adapter",
            s(&adapter),
            "--pooling",
            "mean",
            "--json",
            "good",
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(mean.trim()).unwrap();
    let p0 = json["probs"][0].as_f64().unwrap() as f32;
    assert!((p0 - want[6]).abs() > 1e-3, "{p0} vs {}", want[6]);
}

#[test]
fn sentiment_trains_three_classes_from_csv_and_jsonl_and_predict_names_them() {
    let setup = setup();
    let dir = scratch("cli", "three_classes");
    let neutral = [
        "so so",
        "average film",
        "it was okay",
        "fine I guess",
        "meh",
        "plain",
    ];
    let rows = |copies: usize| {
        let mut rows = Vec::new();
        for i in 0..copies {
            for ((p, n), m) in common::POSITIVE.iter().zip(common::NEGATIVE).zip(neutral) {
                rows.push((format!("{p} {i}"), "pos"));
                rows.push((format!("{n} {i}"), "neg"));
                rows.push((format!("{m} {i}"), "neutral"));
            }
        }
        rows
    };
    // CSV with the columns in another order, other names, a quoted comma and an id.
    let mut csv = String::from("id,stars,review\n");
    for (i, (text, label)) in rows(4).iter().enumerate() {
        csv.push_str(&format!("{i},{label},\"{text}, really\"\n"));
    }
    let train = dir.join("train.csv");
    fs::write(&train, csv).unwrap();
    let mut jsonl = String::new();
    for (text, label) in rows(1) {
        jsonl.push_str(&format!(
            "{}\n",
            serde_json::json!({"review": text, "stars": label})
        ));
    }
    let test = dir.join("test.jsonl");
    fs::write(&test, jsonl).unwrap();
    let out = dir.join("out");
    let columns = ["--text-column", "review", "--label-column", "stars"];
    let args = [
        &[
            "--data-file",
            s(&train),
            "--test-file",
            s(&test),
            "--modes",
            "lora,head",
        ][..],
        &["--out", s(&out), "--epochs", "2"],
        &columns,
    ]
    .concat();
    let stdout = succeeds(&setup.sentiment(&args));
    assert!(
        stdout.contains("labels: neg, neutral, pos (3 classes"),
        "{stdout}"
    );
    assert!(stdout.contains("lora confusion matrix (test)"), "{stdout}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        metrics["labels"],
        serde_json::json!(["neg", "neutral", "pos"])
    );
    for run in metrics["runs"].as_array().unwrap() {
        assert_eq!(run["labels"], metrics["labels"]);
        let matrix: Vec<Vec<u64>> =
            serde_json::from_value(run["confusion_matrix"].clone()).unwrap();
        assert_eq!(matrix.len(), 3);
        let total: u64 = matrix.iter().flatten().sum();
        assert_eq!(total, 18, "every test example counted once");
        let trace: u64 = (0..3).map(|i| matrix[i][i]).sum();
        let accuracy = run["test_accuracy"].as_f64().unwrap();
        assert!((accuracy - trace as f64 / 18.0).abs() < 1e-12, "{run}");
        let per_class = run["per_class"].as_array().unwrap();
        assert_eq!(per_class.len(), 3);
        let mut f1 = 0.0;
        for (c, class) in per_class.iter().enumerate() {
            assert_eq!(class["label"], metrics["labels"][c]);
            assert_eq!(class["support"], 6);
            let recall = class["recall"].as_f64().unwrap();
            assert!((recall - matrix[c][c] as f64 / 6.0).abs() < 1e-12);
            f1 += class["f1"].as_f64().unwrap() / 3.0;
        }
        assert!((run["macro_f1"].as_f64().unwrap() - f1).abs() < 1e-12);
    }
    let adapter = out.join("lora_adapter");
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(adapter.join("labels.json")).unwrap()).unwrap();
    assert_eq!(record["labels"], metrics["labels"]);
    assert_eq!(record["pooling"], "last");
    let base = setup.base();
    let answer = succeeds(&run(
        "predict",
        &[
            "--base",
            s(&base),
            "--adapter",
            s(&adapter),
            "--json",
            "so so 9",
        ],
    ));
    let json: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(json["probs"].as_array().unwrap().len(), 3);
    let label = json["label"].as_str().unwrap();
    assert!(["neg", "neutral", "pos"].contains(&label), "{json}");
    // A pooling that contradicts the record names both.
    fails(
        run(
            "predict",
            &[
                "--base",
                s(&base),
                "--adapter",
                s(&adapter),
                "--pooling",
                "mean",
                "x",
            ],
        ),
        &["--pooling mean", "labels.json", "--pooling last"],
    );
    // A malformed CSV line names file and line.
    let bad = dir.join("bad.csv");
    fs::write(&bad, "review,stars\n\"good\",pos\n\"bad\"x,neg\n").unwrap();
    fails(
        setup.sentiment(&[&["--data-file", s(&bad)][..], &columns].concat()),
        &["bad.csv:3: text after a closing quote"],
    );
}

// ---- checkpoints and resume ----

/// Runs the sentiment example with `args` and kills it (SIGKILL) as soon as its stdout
/// shows `needle`, a line of its step log. Returns whether the kill is what ended it.
fn kill_at(args: &[String], needle: &str) -> bool {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(example("sentiment"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap().contains(needle) {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap().signal() == Some(9)
}

/// metrics.json without the fields that measure time and memory, which no two runs share.
fn metrics_without_timings(out: &Path) -> serde_json::Value {
    let mut json: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("metrics.json")).unwrap()).unwrap();
    for run in json["runs"].as_array_mut().unwrap() {
        let run = run.as_object_mut().unwrap();
        for timing in ["train_seconds", "median_step_seconds", "peak_rss_bytes"] {
            assert!(run.remove(timing).is_some(), "{timing}");
        }
    }
    json
}

fn full_model_values(out: &Path, base: &Path) -> Vec<burn::tensor::TensorData> {
    use burn_lora_demo::train::sentiment::{BaseModel, LoadedModel, Trained, load_classifier};
    let checkpoint = Trained::Checkpoint(out.join("full_model.bpk"));
    let base = BaseModel::Gpt(base.to_path_buf());
    let device = burn::tensor::Device::default();
    let LoadedModel::Gpt(model, _) = load_classifier(&base, &checkpoint, None, &device)
        .unwrap()
        .model
    else {
        panic!("a GPT base loads a GPT classifier")
    };
    common::param_values(&model)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[test]
#[ignore = "slow stress test (kills and resumes, 6 s); run with --include-ignored"]
fn a_killed_run_resumes_to_the_same_bytes_and_metrics() {
    let setup = setup();
    let dir = scratch("cli", "resume");
    let train = fs::read_to_string(setup.file("train.tsv")).unwrap();
    fs::write(dir.join("train.tsv"), train.repeat(20)).unwrap(); // 108 steps an epoch
    let (base, data, test) = (setup.base(), dir.join("train.tsv"), setup.file("test.tsv"));
    for replicas in ["1", "2"] {
        let args = |out: &Path, resume: bool| -> Vec<String> {
            let mut args = vec![
                "--base",
                s(&base),
                "--data-file",
                s(&data),
                "--test-file",
                s(&test),
                "--modes",
                "full,lora,head",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--dropout",
                "0.1",
                "--replicas",
                replicas,
                "--checkpoint-every",
                "5",
            ];
            match resume {
                true => args.extend(["--resume", s(out)]),
                false => args.extend(["--out", s(out)]),
            }
            args.into_iter().map(String::from).collect()
        };
        let reference = dir.join(format!("reference-{replicas}"));
        let _ = fs::remove_dir_all(&reference);
        succeeds(&run(
            "sentiment",
            &args(&reference, false)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ));
        // Killed three times, at points read off the step log: in the first mode, in the
        // second mode's first epoch, and in the last mode's second epoch.
        let out = dir.join(format!("killed-{replicas}"));
        let _ = fs::remove_dir_all(&out);
        let points = [("full", 10), ("lora", 55), ("head", 150)];
        for (i, (mode, step)) in points.into_iter().enumerate() {
            let needle = format!(
                "{mode}: checkpoint {}",
                out.join("checkpoints")
                    .join(mode)
                    .join(format!("step-{step:08}"))
                    .display()
            );
            assert!(
                kill_at(&args(&out, i > 0), &needle),
                "the kill at {mode} step {step} ended the run"
            );
            // The kill landed mid-run: no results yet, and that mode's latest checkpoint is
            // at or after the step the kill was aimed at, short of the mode's 216 steps.
            assert!(
                !out.join("metrics.json").exists(),
                "{mode} {step}: the run had finished"
            );
            let latest = fs::read_dir(out.join("checkpoints").join(mode))
                .unwrap()
                .filter_map(|e| e.unwrap().file_name().into_string().ok())
                .filter_map(|n| {
                    n.strip_prefix("step-")
                        .and_then(|n| n.parse::<usize>().ok())
                })
                .max()
                .unwrap();
            assert!(
                (step..216).contains(&latest),
                "{mode}: latest checkpoint {latest}"
            );
        }
        let resumed = succeeds(&run(
            "sentiment",
            &args(&out, true)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ));
        assert!(resumed.contains("head: resumed from"), "{resumed}");
        assert!(
            resumed.contains("full finished before the interruption"),
            "{resumed}"
        );
        for file in [
            "lora_adapter/adapter_model.safetensors",
            "lora_adapter/adapter_config.json",
            "lora_adapter/labels.json",
            "loss.csv",
            "accuracy.csv",
            "labels.json",
        ] {
            assert!(
                fs::read(reference.join(file)).unwrap() == fs::read(out.join(file)).unwrap(),
                "replicas {replicas}: {file} differs from the uninterrupted run's"
            );
        }
        assert_eq!(
            metrics_without_timings(&reference),
            metrics_without_timings(&out)
        );
        // Burnpack files carry random parameter ids, so the full model is compared by value.
        assert!(
            full_model_values(&reference, &setup.base()) == full_model_values(&out, &setup.base())
        );
    }
}

#[test]
fn resume_refuses_another_configuration_and_a_run_without_checkpoints() {
    let setup = setup();
    let dir = scratch("cli", "resume_refused");
    let out = dir.join("out");
    let first = [
        "--modes",
        "head",
        "--checkpoint-every",
        "3",
        "--out",
        s(&out),
    ];
    succeeds(&setup.sentiment(&first));
    fails(
        setup.sentiment(&[
            "--modes",
            "head",
            "--checkpoint-every",
            "3",
            "--resume",
            s(&out),
            "--seed",
            "9",
            "--no-overwrite",
        ]),
        &[
            "--resume",
            "`seed` differs: the run was started with 42, this command gives 9",
        ],
    );
    fails(
        setup.sentiment(&[
            "--modes",
            "head",
            "--checkpoint-every",
            "3",
            "--resume",
            s(&dir),
            "--no-overwrite",
        ]),
        &["no job.json there"],
    );
    let plain = dir.join("plain");
    succeeds(&setup.sentiment(&["--modes", "head", "--out", s(&plain)]));
    fails(
        setup.sentiment(&["--modes", "head", "--resume", s(&plain), "--no-overwrite"]),
        &["started without --checkpoint-every"],
    );
    // The same command resumes a finished run: every mode is read back, nothing retrains.
    let again = succeeds(&setup.sentiment(&[
        "--modes",
        "head",
        "--checkpoint-every",
        "3",
        "--resume",
        s(&out),
        "--no-overwrite",
    ]));
    assert!(
        again.contains("head finished before the interruption"),
        "{again}"
    );
}

#[test]
fn init_adapter_continues_training_an_adapter_with_its_factors_trainable() {
    let setup = setup();
    let dir = scratch("cli", "init_adapter");
    let adapter = setup.adapter();
    let out = dir.join("out");
    let stdout = succeeds(&setup.sentiment(&[
        "--modes",
        "lora",
        "--init-adapter",
        s(&adapter),
        "--rank",
        "7",
        "--out",
        s(&out),
    ]));
    // The adapter's config wins over --rank, and its factors train with the head.
    assert!(stdout.contains("LoRA starts from"), "{stdout}");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(adapter.join("adapter_config.json")).unwrap()).unwrap();
    let saved: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("lora_adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["r"], config["r"]);
    let metrics: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let head_params = 16 * 2 + 2;
    let trainable = metrics["runs"][0]["trainable_params"].as_u64().unwrap();
    assert!(
        trainable > head_params,
        "factors are trainable: {trainable}"
    );
    // It trained from the adapter: the new factors differ from the old ones.
    let before = fs::read(adapter.join("adapter_model.safetensors")).unwrap();
    let after = fs::read(out.join("lora_adapter/adapter_model.safetensors")).unwrap();
    assert!(before != after);
    // An adapter trained on other labels is refused, naming both.
    let three = dir.join("three.tsv");
    fs::write(&three, "a\tgood\nb\tbad\nc\tmeh\n").unwrap();
    fails(
        setup.sentiment(&[
            "--modes",
            "lora",
            "--init-adapter",
            s(&adapter),
            "--data-file",
            s(&three),
            "--test-file",
            s(&three),
        ]),
        &["--init-adapter", "labels [0, 1]", "the data has [a, b, c]"],
    );
}

// ---- bench ----

#[test]
fn bench_writes_the_documented_json_shape() {
    let dir = scratch("cli", "bench");
    let out = dir.join("bench.json");
    let sizes = [
        "--vocab",
        "64",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--d-ff",
        "32",
        "--batch",
        "2",
        "--seq",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
    ];
    let args = [&sizes[..], &["--out", s(&out), "--floor"]].concat();
    succeeds(&run("bench", &args));
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    let mut top: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    top.sort();
    assert_eq!(top, ["backend", "cases", "cpu"]);
    assert!(json["backend"].as_str().unwrap().starts_with("burn 0.22"));
    let cases = json["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "full",
            "lora_qv",
            "lora_qv_dense",
            "lora_all_linear",
            "burn_apply_lora_qv",
            "infer_base",
            "infer_lora_unmerged",
            "infer_lora_merged",
            "floor_qv"
        ]
    );
    for case in cases {
        let mut keys: Vec<_> = case.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "max_seconds",
                "median_seconds",
                "min_seconds",
                "name",
                "peak_rss_bytes",
                "trainable_params"
            ]
        );
        assert!(case["median_seconds"].as_f64().unwrap() > 0.0);
        assert!(case["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    // LoRA q,v on one block of width 16: r·(16 + 16) for each of the two, plus the head.
    assert_eq!(cases[1]["trainable_params"], 2 * 8 * 32 + 16 * 2 + 2);
    assert_eq!(cases[1]["trainable_params"], cases[2]["trainable_params"]);
    assert_eq!(cases[1]["trainable_params"], cases[4]["trainable_params"]);
}

/// `bench --llm`: the LLM-size cases under their documented names, on the tiny geometry
/// (the same Qwen2-shaped decoder as `--llm qwen2-0.5b`, small enough for CI).
#[test]
fn bench_llm_writes_every_documented_case() {
    let dir = scratch("cli", "bench-llm");
    let out = dir.join("llm.json");
    let args = [
        "--llm",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--prompt-tokens",
        "3",
        "--new-tokens",
        "4",
        "--out",
        s(&out),
    ];
    succeeds(&run("bench", &args));
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json["model"], "tiny");
    assert!(!json["cpu"].as_str().unwrap().is_empty());
    let cases = json["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "llm_lora_step",
            "llm_lora_q8_step",
            "llm_lora_ckpt_step",
            "llm_lora_q8_ckpt_step",
            "llm_lora_q8_embed_step",
            "llm_lora_q8_embed_ckpt_step",
            "llm_full_step",
            "llm_prefill",
            "llm_decode_b1",
            "llm_decode_b4"
        ]
    );
    for case in cases {
        assert!(case.get("skipped").is_none(), "{case}");
        assert!(case["median_seconds"].as_f64().unwrap() > 0.0, "{case}");
        assert!(case["peak_rss_bytes"].as_u64().unwrap() > 0, "{case}");
    }
    // LoRA r 16 on q, k, v, o, gate, up, down of 2 layers, d 64, kv 2 × 16, FFN 128:
    // r · (d_in + d_out) each.
    let per_layer = 16 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64));
    for case in &cases[..6] {
        assert_eq!(case["trainable_params"], 2 * per_layer, "{case}");
    }
    assert_eq!(cases[6]["trainable_params"], cases[6]["params"]);
    for (case, tokens) in [(7, 2 * 8), (8, 4), (9, 4 * 4)] {
        let c = &cases[case];
        let want = tokens as f64 / c["median_seconds"].as_f64().unwrap();
        let got = c["tokens_per_second"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6 * want, "{c}");
    }
}

/// `examples/custom_model.rs`, the README's "Using LoRA in your own model": a stock
/// `TransformerEncoder` adapted without code changes trains (the loss falls), and its adapter
/// reloads onto a fresh base and merges with the same outputs.
#[test]
fn custom_model_trains_reloads_and_merges_a_stock_burn_model() {
    let out = succeeds(&run("custom_model", &[]));
    // 2 layers × (query, value) × r · (d + d) with r = 4, d = 32, plus the head 32·2 + 2.
    assert!(out.contains("trainable params: 1,090 ||"), "{out}");
    let (first, last) = out
        .lines()
        .find_map(|l| l.strip_prefix("loss ")?.split_once(" -> "))
        .expect("a loss line");
    let first: f64 = first.parse().unwrap();
    let last: f64 = last.split(';').next().unwrap().parse().unwrap();
    assert!(
        last < 0.6 * first,
        "the loss fell too little: {first} -> {last}"
    );
    let max_diff = |prefix: &str| -> f64 {
        let line = out.lines().find(|l| l.starts_with(prefix)).unwrap();
        let value = line
            .split("= ")
            .nth(1)
            .unwrap()
            .split([',', ' '])
            .next()
            .unwrap();
        value.parse().unwrap()
    };
    assert!(max_diff("saved and reloaded") < 1e-5, "{out}");
    assert!(max_diff("merged") < 1e-4, "{out}");
    assert!(out.contains(", 0 adapters left"), "{out}");
}

// ---- several adapters ----

/// Probabilities of predict's `--json` lines, with the adapter that answered.
fn answers(out: &str) -> Vec<(String, Vec<f64>)> {
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let probs = v["probs"].as_array().unwrap();
            let probs = probs.iter().map(|p| p.as_f64().unwrap()).collect();
            (v["adapter"].as_str().unwrap_or("").to_string(), probs)
        })
        .collect()
}

#[test]
#[ignore = "slow: trains two adapters (25 s); run with --include-ignored"]
fn multi_adapter_serves_a_mixed_batch_and_predict_routes_each_line() {
    let dir = scratch("cli", "multi_adapter");
    let out = dir.join("adapters");
    let args = [
        "--train-examples",
        "64",
        "--test-examples",
        "16",
        "--out",
        s(&out),
    ];
    let report = succeeds(&run("multi_adapter", &args));
    let diff: f64 = report
        .lines()
        .find_map(|l| l.strip_prefix("largest |mixed - alone| logit difference: "))
        .unwrap_or_else(|| panic!("no mixed-batch line: {report}"))
        .parse()
        .unwrap();
    assert!(diff < 1e-5, "{report}");
    assert!(report.contains("adapters left: [\"en\"]"), "{report}");

    // predict serves both adapters through one base, line by line.
    let (en, zh) = (
        format!("en={}", s(&out.join("en"))),
        format!("zh={}", s(&out.join("zh"))),
    );
    let lines =
        "en\tA gem of a film.\nzh\t性能很好。\n__base__\tDull.\nNo tab: the first adapter.\n";
    let both = ["--adapter", &en, "--adapter", &zh, "--json"];
    let mixed = answers(&succeeds(&run_with_stdin("predict", &both, lines)));
    let routed: Vec<&str> = mixed.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(routed, ["en", "zh", "__base__", "en"]);
    // Each line as its adapter alone answers it.
    for (i, (adapter, text)) in [
        ("en", "A gem of a film."),
        ("zh", "性能很好。"),
        ("en", "No tab: the first adapter."),
    ]
    .iter()
    .enumerate()
    {
        let one = if *adapter == "en" { &en } else { &zh };
        let alone = answers(&succeeds(&run_with_stdin(
            "predict",
            &["--adapter", one, "--json"],
            text,
        )));
        let row = if i == 2 { 3 } else { i };
        for (m, a) in mixed[row].1.iter().zip(&alone[0].1) {
            assert!(
                (m - a).abs() < 1e-5,
                "line {row}: {:?} vs {:?}",
                mixed[row],
                alone[0]
            );
        }
    }
    // The bare base has a zero head: even odds.
    assert!(
        mixed[2].1.iter().all(|p| (p - 0.5).abs() < 1e-6),
        "{:?}",
        mixed[2]
    );
}

#[test]
fn predict_refuses_two_adapters_that_each_carry_a_head() {
    let setup = setup();
    let base = setup.base();
    let adapter = setup.adapter();
    let (a, b) = (format!("a={}", s(&adapter)), format!("b={}", s(&adapter)));
    let args = ["--base", s(&base), "--adapter", &a, "--adapter", &b, "hi"];
    fails(run("predict", &args), &["modules", "a base of its own"]);
}

#[test]
#[ignore = "slow: pre-trains (4 s); run with --include-ignored"]
fn pretrain_init_continues_a_base_on_new_text() {
    let dir = scratch("cli", "pretrain_init");
    let corpus = dir.join("zh.tsv");
    let lines: Vec<String> = (0..400)
        .map(|i| format!("{}\t这本书第{i}页很好看，物流也很快。", i % 2))
        .collect();
    fs::write(&corpus, lines.join("\n")).unwrap();
    let out = dir.join("base_zh");
    let args = [
        "--init",
        "fixtures/base",
        "--datasets",
        s(&corpus),
        "--out",
        s(&out),
        "--max-steps",
        "2",
    ];
    let report = succeeds(&run("pretrain", &args));
    assert!(report.contains("continuing from fixtures/base"), "{report}");
    // The base's tokenizer and sizes are kept; the weights moved.
    let read = |p: &Path| fs::read(p).unwrap();
    assert_eq!(
        read(&out.join("tokenizer.json")),
        read(Path::new("fixtures/base/tokenizer.json"))
    );
    assert_eq!(
        read(&out.join("config.json")),
        read(Path::new("fixtures/base/config.json"))
    );
    assert_ne!(
        read(&out.join("model.bpk")),
        read(Path::new("fixtures/base/model.bpk"))
    );
    // A base that is not one is a clean error.
    let x = dir.join("x");
    let missing = ["--init", s(&dir), "--datasets", s(&corpus), "--out", s(&x)];
    fails(run("pretrain", &missing), &["tokenizer.json"]);
}

/// `generate --json` lines as (tokens, token_logprobs), checking each line's fields.
fn generations(stdout: &str) -> Vec<(Vec<u64>, Vec<f64>)> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for field in ["prompt", "completion", "finish_reason"] {
                assert!(v[field].is_string(), "{field} in {line}");
            }
            assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0, "{line}");
            let list = |field: &str| v[field].as_array().unwrap().clone();
            let tokens: Vec<u64> = list("tokens").iter().map(|t| t.as_u64().unwrap()).collect();
            let logprobs: Vec<f64> = list("token_logprobs")
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect();
            assert_eq!(tokens.len(), logprobs.len(), "{line}");
            assert!(logprobs.iter().all(|&p| p <= 0.0), "{line}");
            (tokens, logprobs)
        })
        .collect()
}

#[test]
fn generate_batches_prompts_the_same_with_and_without_the_kv_cache() {
    let args = |cache: bool| {
        let mut args = vec![
            "--base",
            "fixtures/base_zh",
            "--prompt",
            "这本书",
            "--prompt",
            "质量很好，物流也快",
            "--max-new-tokens",
            "24",
            "--json",
        ];
        if !cache {
            args.push("--no-cache");
        }
        args
    };
    let cached = generations(&succeeds(&run("generate", &args(true))));
    let uncached = generations(&succeeds(&run("generate", &args(false))));
    assert_eq!(cached.len(), 2);
    for ((tokens, logprobs), (want_tokens, want_logprobs)) in cached.iter().zip(&uncached) {
        assert_eq!(tokens, want_tokens, "cached and uncached tokens");
        assert!(!tokens.is_empty());
        for (a, b) in logprobs.iter().zip(want_logprobs) {
            assert!((a - b).abs() < 1e-4, "log-probabilities {a} and {b}");
        }
    }
    // Sampling is seeded: the same seed gives the same tokens.
    let sampled = ["--top-p", "0.9", "--temperature", "0.8", "--seed", "7"];
    let once = generations(&succeeds(&run(
        "generate",
        &[&args(true)[..], &sampled].concat(),
    )));
    let again = generations(&succeeds(&run(
        "generate",
        &[&args(true)[..], &sampled].concat(),
    )));
    assert_eq!(once, again);
}

#[test]
fn generate_with_a_peft_adapter_on_a_hugging_face_decoder_gives_peft_greedy_tokens() {
    let dir = "tests/fixtures/llm/qwen2";
    let golden: serde_json::Value =
        serde_json::from_slice(&fs::read(format!("{dir}/golden.json")).unwrap()).unwrap();
    let want: serde_json::Value = serde_json::from_slice(
        &fs::read(format!("{dir}/peft_all_linear/peft_golden.json")).unwrap(),
    )
    .unwrap();
    let base = format!("hf:{dir}");
    let adapter = format!("{dir}/peft_all_linear");
    let mut args = vec!["--base", &base, "--adapter", &adapter, "--json"];
    for prompt in golden["prompts"].as_array().unwrap() {
        args.extend(["--prompt", prompt.as_str().unwrap()]);
    }
    args.extend(["--max-new-tokens", "10", "--greedy"]);
    let want: Vec<Vec<u64>> = serde_json::from_value(want["greedy"].clone()).unwrap();
    for extra in [&[][..], &["--merge"], &["--no-cache"]] {
        let got = generations(&succeeds(&run("generate", &[&args[..], extra].concat())));
        let tokens: Vec<Vec<u64>> = got.into_iter().map(|(t, _)| t).collect();
        assert_eq!(tokens, want, "PEFT's greedy tokens with {extra:?}");
    }
    // The chat template renders the prompt as a user turn.
    let chat = succeeds(&run(
        "generate",
        &[
            "--base",
            &base,
            "--chat",
            "--prompt",
            "Hi",
            "--json",
            "--max-new-tokens",
            "2",
        ],
    ));
    assert_eq!(generations(&chat)[0].0.len(), 2);
    // Bad input is a named error.
    let no_template = ["--base", "fixtures/base_zh", "--chat", "--prompt", "x"];
    fails(run("generate", &no_template), &["--chat", "chat template"]);
    let missing = [
        "--base",
        &base,
        "--adapter",
        "no/such/adapter",
        "--prompt",
        "x",
    ];
    fails(run("generate", &missing), &["no/such/adapter"]);
    let top_p = ["--base", &base, "--top-p", "1.5", "--prompt", "x"];
    fails(run("generate", &top_p), &["--top-p"]);
    fails(
        run("generate", &["--base", "hf:no/such/dir"]),
        &["no/such/dir"],
    );
}

#[test]
fn sft_trains_from_jsonl_and_writes_metrics_and_a_peft_adapter() {
    let dir = scratch("cli", "sft");
    let lines: Vec<String> = ["red", "green", "blue", "black", "white", "pink"]
        .iter()
        .enumerate()
        .map(|(i, c)| format!(r#"{{"prompt": "Colour {i}:", "completion": " {c}"}}"#))
        .collect();
    let data = dir.join("train.jsonl");
    fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let args = [
        "--base",
        "hf:tests/fixtures/llm/qwen2",
        "--data-file",
        s(&data),
        "--test-file",
        s(&data),
        "--out",
        s(&out),
        "--epochs",
        "2",
        "--batch-size",
        "2",
    ];
    let report = succeeds(&run("sft", &args));
    assert!(report.contains("exact match"), "{report}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("metrics.json")).unwrap()).unwrap();
    for field in ["train_loss", "eval_loss", "eval_perplexity"] {
        assert!(
            metrics[field].as_f64().unwrap().is_finite(),
            "{field}: {metrics}"
        );
    }
    let exact = metrics["exact_match"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&exact), "{metrics}");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("lora/adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert!(out.join("lora/loss_curve.svg").is_file());
    // generate takes the adapter it wrote.
    let adapter = out.join("lora/adapter");
    let gen_args = [
        "--base",
        "hf:tests/fixtures/llm/qwen2",
        "--adapter",
        s(&adapter),
        "--prompt",
        "Colour 1:",
        "--json",
    ];
    assert_eq!(generations(&succeeds(&run("generate", &gen_args))).len(), 1);
    // Bad input: the file, the line and the field.
    let bad = dir.join("bad.jsonl");
    fs::write(&bad, format!("{}\n{{\"prompt\": \"x\"}}\n", lines[0])).unwrap();
    let bad_args = [
        "--base",
        "hf:tests/fixtures/llm/qwen2",
        "--data-file",
        s(&bad),
        "--test-file",
        s(&data),
    ];
    fails(run("sft", &bad_args), &["bad.jsonl:2", "`completion`"]);
    fails(run("sft", &["--dataset", "fr"]), &["--dataset fr"]);
    let zero_out = dir.join("zero");
    let zero = [
        "--base",
        "hf:tests/fixtures/llm/qwen2",
        "--data-file",
        s(&data),
        "--test-file",
        s(&data),
        "--batch-size",
        "0",
        "--out",
        s(&zero_out),
    ];
    fails(run("sft", &zero), &["--batch-size 0", "at least 1"]);
    fails(run("sft", &["--modes", "head"]), &["--modes", "head"]);
    let no_base = ["--data-file", s(&data), "--test-file", s(&data)];
    fails(run("sft", &no_base), &["--base"]);
}

/// examples/learner.rs: a model of stock `burn::nn` layers, LoRA by `apply_lora`, both
/// stages on burn-train's `Learner`; the saved adapter, loaded back onto the saved base,
/// scores what the trained model scored.
#[test]
fn learner_trains_a_stock_burn_model_with_lora_on_burn_train() {
    let dir = scratch("cli", "learner");
    let (train, test) = (dir.join("train.tsv"), dir.join("test.tsv"));
    write_tsv(&train, 4);
    write_tsv(&test, 1);
    let out = dir.join("out");
    let args = [
        "--data-file",
        s(&train),
        "--test-file",
        s(&test),
        "--max-train",
        "48",
        "--epochs",
        "1",
        "--out",
        s(&out),
        "--overwrite",
    ];
    let report = succeeds(&run("learner", &args));
    assert!(
        report.contains("| + LoRA (second half) | 4226 |"),
        "{report}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("metrics.json")).unwrap()).unwrap();
    // Rank 8 on query and value (d 64) in 2 layers, 2 · 2 · 8 · (64 + 64), and the head.
    assert_eq!(
        metrics["trainable_params"],
        2 * 2 * 8 * (64 + 64) + 64 * 2 + 2
    );
    assert_eq!(metrics["test_examples"], 12);
    assert_eq!(metrics["reloaded_accuracy"], metrics["lora_accuracy"]);
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["modules_to_save"], serde_json::json!(["head"]));
    assert!(out.join("train_lora/checkpoint/model-1.bpk").is_file());
    fails(
        run(
            "learner",
            &[
                "--data-file",
                "missing.tsv",
                "--out",
                s(&out),
                "--overwrite",
            ],
        ),
        &["missing.tsv"],
    );
}
