//! Byte-level BPE: round trips and the saved format.

use burn_lora_demo::tokenizer::{BpeTokenizer, SPECIAL_TOKENS, train_tokenizer};

fn tokenizer() -> BpeTokenizer {
    let corpus: Vec<String> = [
        "the movie was good and the acting was good",
        "the movie was bad, the plot was bad",
        "这本书很好，这本书很有意思",
        "质量很差，不推荐",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    train_tokenizer(&corpus, 300, &SPECIAL_TOKENS).unwrap()
}

#[test]
fn decode_inverts_encode_for_any_utf8() {
    let tokenizer = tokenizer();
    for text in [
        "The movie was good.",
        "这本书很好",
        "emoji 🎬🍿 and ümlauts",
        "mixed 中文 English 한국어",
        "  whitespace\truns \n\n  and trailing  ",
        "",
        "never-seen-before xyzzy ∑∫",
    ] {
        let ids = tokenizer.encode(text).unwrap();
        assert_eq!(
            tokenizer.decode(&ids).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}

#[test]
fn special_tokens_take_the_first_ids() {
    let tokenizer = tokenizer();
    assert_eq!(
        (tokenizer.pad_id(), tokenizer.bos_id(), tokenizer.eos_id()),
        (0, 1, 2)
    );
    // 256 byte tokens + 3 special + the merges this small corpus supports, at most 300.
    let size = tokenizer.vocab_size();
    assert!(size > 259 && size <= 300, "vocabulary of {size}");
}

#[test]
fn frequent_words_merge_and_rare_characters_split_into_bytes() {
    let tokenizer = tokenizer();
    // Byte-level BPE keeps a word's leading space: " movie" is one learned token.
    assert_eq!(
        tokenizer.encode(" movie").unwrap().len(),
        1,
        "a frequent word is one token"
    );
    // 鬱 never occurs in the corpus: its three UTF-8 bytes stay three byte tokens.
    assert_eq!(tokenizer.encode("鬱").unwrap().len(), 3);
}

#[test]
fn saved_tokenizer_json_loads_and_encodes_the_same() {
    let tokenizer = tokenizer();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer.json");
    tokenizer.save(&path).unwrap();
    let loaded = BpeTokenizer::load(&path).unwrap();
    let text = "the movie 这本书 was good";
    assert_eq!(
        loaded.encode(text).unwrap(),
        tokenizer.encode(text).unwrap()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["model"]["type"], "BPE");
    assert_eq!(json["pre_tokenizer"]["type"], "ByteLevel");
}

#[test]
fn missing_or_corrupt_tokenizer_is_an_error_naming_the_file() {
    let err = BpeTokenizer::load("/nonexistent/tokenizer.json").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("corrupt_tokenizer.json");
    std::fs::write(&path, "{ not json").unwrap();
    let err = BpeTokenizer::load(&path).unwrap_err();
    assert!(err.to_string().contains("corrupt_tokenizer.json"), "{err}");
}
