//! Every `cargo` command in the README and the other docs runs as written: the example,
//! test or bench it names exists, every flag it passes is one the example accepts (checked
//! against the built example's `--help`), and the quick commands run to success.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DOCS: [&str; 8] = [
    "README.md",
    "docs/CONCEPTS.md",
    "docs/CONCEPTS.zh.md",
    "docs/GUIDE.md",
    "docs/RESULTS.md",
    "docs/BENCHMARKS.md",
    "docs/ARCHITECTURE.md",
    "crates/burn-lora/README.md",
];

/// Examples that finish in seconds on the shipped base, so their documented commands are run.
const QUICK: [&str; 4] = ["tokenize", "generate", "params", "custom_model"];

/// Where the docs put a checkpoint the user downloaded (`hf:/models/...`): we cannot
/// download one here, so those commands are checked for flags but not run.
const USER_MODELS: &str = "/models/";

/// Whether a command reads what another documented command writes (`runs/...`) or what
/// the user downloaded: such commands are checked for flags but not run.
fn needs_earlier_outputs(args: &[&str]) -> bool {
    args.iter()
        .any(|a| a.contains(USER_MODELS) || a.starts_with("runs/") || a.contains("=runs/"))
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Splits a command line into words, keeping double-quoted text together; stops at `#`.
fn words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '#' if !quoted && word.is_empty() => break,
            c if c.is_whitespace() && !quoted => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// Every `cargo run|test|bench ...` command in `text`, in code blocks or inline code, as
/// words starting at `cargo`.
fn cargo_commands(text: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(at) = rest.find("cargo ") {
            let tail = &rest[at..];
            let end = tail.find('`').unwrap_or(tail.len());
            let command = words(&tail[..end]);
            rest = &tail[end..];
            if matches!(
                command.get(1).map(String::as_str),
                Some("run" | "test" | "bench")
            ) {
                commands.push(command);
            }
            if rest.is_empty() {
                break;
            }
            rest = &rest[1..];
        }
    }
    commands
}

/// The value after `flag` in `words`.
fn value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    let at = words.iter().position(|w| w == flag)?;
    words.get(at + 1).map(String::as_str)
}

fn example_binary(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let path = test_binary
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing; run with `cargo test`",
        path.display()
    );
    path
}

#[test]
fn the_word_splitter_keeps_quotes_and_drops_comments() {
    assert_eq!(
        words(r#"cargo run --example tokenize -- "A b" x   # note"#),
        ["cargo", "run", "--example", "tokenize", "--", "A b", "x"]
    );
    let found = cargo_commands("1. `cargo run --example a -- --x 1` and `cargo test --test b`");
    assert_eq!(found.len(), 2);
    assert_eq!(value(&found[0], "--example"), Some("a"));
    assert_eq!(value(&found[1], "--test"), Some("b"));
}

#[test]
fn every_documented_command_names_real_targets_and_flags() {
    let mut checked = 0;
    let mut ran = 0;
    for doc in DOCS {
        let text = fs::read_to_string(root().join(doc)).unwrap();
        let commands = cargo_commands(&text);
        for command in commands {
            let shown = command.join(" ");
            // `-p burn-lora` names the library crate, whose tests live in its own folder.
            let package = match value(&command, "-p") {
                Some("burn-lora") => root().join("crates/burn-lora"),
                Some(other) => panic!("{doc}: `{shown}`: unknown package {other}"),
                None => root().to_path_buf(),
            };
            for (flag, dir) in [
                ("--example", "examples"),
                ("--test", "tests"),
                ("--bench", "benches"),
            ] {
                if let Some(name) = value(&command, flag) {
                    let file = package.join(dir).join(format!("{name}.rs"));
                    let folder = package.join(dir).join(name).join("main.rs");
                    assert!(
                        file.is_file() || folder.is_file(),
                        "{doc}: `{shown}`: no {}",
                        file.display()
                    );
                }
            }
            let Some(example) = value(&command, "--example") else {
                continue;
            };
            // Cargo's own flags come before `--`; the example's after it.
            let args: Vec<&str> = match command.iter().position(|w| w == "--") {
                Some(at) => command[at + 1..].iter().map(String::as_str).collect(),
                None => Vec::new(),
            };
            if args.iter().any(|a| a.starts_with("--")) {
                let help = Command::new(example_binary(example))
                    .arg("--help")
                    .output()
                    .unwrap();
                let help = String::from_utf8_lossy(&help.stdout);
                for flag in args.iter().filter(|a| a.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                        "{doc}: `{shown}`: {example} has no flag {flag}:\n{help}"
                    );
                }
            }
            if QUICK.contains(&example) && !needs_earlier_outputs(&args) {
                let output = Command::new(example_binary(example))
                    .args(&args)
                    .current_dir(root())
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{doc}: `{shown}` failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                ran += 1;
            }
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} example commands found");
    assert!(ran >= 5, "only {ran} quick commands ran");
}

/// The layers of `src/`, left to right, as `docs/ARCHITECTURE.md` draws them: a module may
/// use its own layer and the layers to its left, never one to its right.
const LAYERS: [&[&str]; 5] = [
    &["error", "io", "device", "memory", "Error"],
    &["tokenizer"],
    &["data"],
    &["model"],
    &["train"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The top-level modules a line of code names through `crate::` (`use crate::a::b`,
/// `crate::{a, b}`, `crate::a::f(...)`).
fn crate_modules(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in line.match_indices("crate::") {
        let rest = &line[at + "crate::".len()..];
        // `crate::{a, b::c}` names a and b; `crate::a::{b, c}` names a.
        let items: Vec<&str> = match rest.strip_prefix('{') {
            Some(inner) => inner.split('}').next().unwrap_or("").split(',').collect(),
            None => vec![rest],
        };
        for item in items {
            let name: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

/// `docs/ARCHITECTURE.md`'s arrows are true: data flows tokenizer → data → model → train,
/// and no module of `src/` uses one to its right (doc comments, which may point anywhere,
/// aside).
#[test]
fn the_module_graph_runs_one_way() {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut against = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("{}: module `{module}` is in no layer", file.display()));
        let text = fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for used in crate_modules(line) {
                let layer = layer_of(&used).unwrap_or_else(|| {
                    panic!(
                        "{}:{}: `crate::{used}` is in no layer",
                        file.display(),
                        n + 1
                    )
                });
                if layer > own {
                    against.push(format!("{}:{}: {}", relative.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        against.is_empty(),
        "imports against the flow:\n{}",
        against.join("\n")
    );
    let architecture = fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    assert!(architecture.contains("tokenizer → data → model → train → examples"));
}

/// No file of either crate's `src/` is over about 300 lines without saying why in its
/// header (a `Size:` line).
#[test]
fn long_files_say_why() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("crates/burn-lora/src"), &mut files);
    let unexplained: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let text = fs::read_to_string(file).unwrap();
            let lines = text.lines().count();
            let header: Vec<&str> = text.lines().take_while(|l| l.starts_with("//!")).collect();
            let explained = header.iter().any(|l| l.starts_with("//! Size:"));
            (lines > 310 && !explained).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    assert!(unexplained.is_empty(), "{}", unexplained.join("\n"));
}
