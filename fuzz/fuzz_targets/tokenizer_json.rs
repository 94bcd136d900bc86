//! `tokenizer.json` on arbitrary bytes; a tokenizer that loads must also encode and decode
//! without panicking.
#![no_main]

use burn_lora_demo::tokenizer::BpeTokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match BpeTokenizer::from_bytes(data, "tokenizer.json") {
        Ok(tokenizer) => {
            if let Ok(ids) = tokenizer.encode("A gem of a film. 这本书 🍿") {
                let _ = tokenizer.decode(&ids);
            }
        }
        Err(err) => assert!(err.to_string().contains("tokenizer.json"), "{err}"),
    }
});
