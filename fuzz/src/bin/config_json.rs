//! A Hugging Face `config.json` through `ModelConfig::from_hf_json`; a config it accepts must come back
//! unchanged through `to_hf_json` (what exports and checkpoints write).
use mappa::config::ModelConfig;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Some(config) = mappa_fuzz::ok("config", ModelConfig::from_hf_json(text)) else { return };
        let written = config.to_hf_json("float32").to_string();
        let again = ModelConfig::from_hf_json(&written).expect("the config.json we write reads back");
        assert_eq!(again, config, "config.json round trip changed the config: {written}");
    });
}
