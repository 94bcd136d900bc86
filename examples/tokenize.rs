//! What a token is: byte-level BPE pieces of an English and a Chinese sentence.
//!
//! ```sh
//! cargo run --release --example tokenize
//! cargo run --release --example tokenize -- "Any text you like"
//! ```

use std::process::ExitCode;

use burn_lora_demo::tokenizer::BpeTokenizer;

fn show(tokenizer: &BpeTokenizer, text: &str) -> Result<(), burn_lora_demo::Error> {
    let ids = tokenizer.encode(text)?;
    println!(
        "\n{text:?}: {} characters, {} bytes, {} tokens",
        text.chars().count(),
        text.len(),
        ids.len()
    );
    for id in &ids {
        let piece = tokenizer.decode(&[*id])?;
        let token = tokenizer.token(*id).unwrap_or_default();
        println!("  {id:>5}  {token:<16} {piece:?}");
    }
    let round_trip = tokenizer.decode(&ids)?;
    println!("  decode(encode(text)) == text: {}", round_trip == text);
    Ok(())
}

fn main() -> ExitCode {
    let path = "fixtures/base/tokenizer.json";
    let tokenizer = match BpeTokenizer::load(path) {
        Ok(t) => t,
        Err(err) => {
            eprintln!("error: {err}\n(build it with `cargo run --release --example pretrain`)");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{path}: {} tokens (256 bytes, 3 special, the rest learned merges)",
        tokenizer.vocab_size()
    );
    println!("A token prints in the byte-level alphabet (Ġ is a space). Frequent words and");
    println!("characters are one token; a rare character (鬱, 🍿) stays several byte tokens,");
    println!("each of which alone is not whole UTF-8 and decodes to '\\u{{fffd}}'.");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let texts = match args.is_empty() {
        true => [
            "The movie was surprisingly good.",
            "这本书写得很好，值得一读。",
            "鬱 🍿",
        ]
        .map(String::from)
        .to_vec(),
        false => args,
    };
    for text in &texts {
        if let Err(err) = show(&tokenizer, text) {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
