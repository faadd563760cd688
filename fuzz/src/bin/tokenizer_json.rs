//! A `tokenizer.json` through `Tokenizer::new` (with the tiny llama fixture's config and the default ChatML
//! template), then encoding, decoding and chat formatting with it.
use mappa::config::ModelConfig;
use mappa::tokenizer::{ChatMessage, Tokenizer, TokenizerSpec};
use std::sync::OnceLock;

const CONFIG: &str = include_str!("../../../tests/data/tiny-llama/config.json");

fn main() {
    static CFG: OnceLock<ModelConfig> = OnceLock::new();
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let config = CFG.get_or_init(|| ModelConfig::from_hf_json(CONFIG).expect("fixture config"));
        let spec = TokenizerSpec { tokenizer_json: text.to_owned(), ..TokenizerSpec::default() };
        let Some(tok) = mappa_fuzz::ok("tokenizer", Tokenizer::new(&spec, config)) else { return };
        if let Ok(ids) = tok.encode("Hello, wörld 123 <|im_end|>\n", true) {
            let _ = tok.decode(&ids, false);
            let _ = tok.decode(&ids, true);
            ids.iter().for_each(|&id| drop(tok.token_bytes(id)));
        }
        let _ = tok.decode(&[0, 1, 2, u32::MAX], false);
        let _ = tok.encode_chat(&[ChatMessage::new("system", "s"), ChatMessage::new("user", "hi")]);
        std::hint::black_box((tok.vocab_size(), tok.stop_ids()));
    });
}
