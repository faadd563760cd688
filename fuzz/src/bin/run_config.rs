//! A run configuration (TOML) through `RunConfig::from_toml_str` (parse and validate); a config it accepts
//! must serialise, and what it writes (the run directory's resolved `config.toml`) must read back the same.
use mappa::run_config::RunConfig;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Some(cfg) = mappa_fuzz::ok("config", RunConfig::from_toml_str(text, "fuzz.toml")) else { return };
        let written = cfg.to_toml_string().expect("an accepted config serialises");
        let again = RunConfig::from_toml_str(&written, "resolved.toml").expect("the config.toml we write reads back");
        // Compared as text: a NaN field would make `again != cfg` although nothing changed.
        assert_eq!(again.to_toml_string().unwrap(), written, "config.toml round trip changed the config");
    });
}
