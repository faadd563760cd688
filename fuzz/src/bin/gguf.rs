//! A `.gguf` file through `mappa::loader::load`: header, metadata, tensor table, the config, every tensor
//! (dequantised where quantised) and the tokenizer rebuilt from metadata; then that tokenizer with its chat
//! template, as `mappa generate` would use it.
use mappa::tokenizer::{ChatMessage, Tokenizer};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let path = mappa_fuzz::scratch_file("model.gguf", data);
        let Some(model) = mappa_fuzz::ok("load", mappa::loader::load(&path)) else { return };
        for tensor in model.weights.tensors.values() {
            std::hint::black_box(tensor.to_f32());
        }
        if let Some(tok) = mappa_fuzz::ok("tokenizer", Tokenizer::new(&model.tokenizer, &model.config)) {
            if let Ok(ids) = tok.encode("ab ba 12!", true) {
                let _ = tok.decode(&ids, false);
            }
            let _ = tok.encode_chat(&[ChatMessage::new("user", "ab")]);
        }
    });
}
