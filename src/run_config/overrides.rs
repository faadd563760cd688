//! `RunConfig::with_overrides`: dotted-key overrides from the command line (`rl.lr=2e-6`).
//!
//! Each override is `KEY=VALUE`. KEY is a TOML dotted key (`rl.lr`, `data.stage_files."train.csv"`),
//! optionally starting with `agents[I]`, I an index or an agent name (`agents[1].max_actions`,
//! `agents[verifier].sampling.top_p`). VALUE is parsed as a TOML value (`2e-6`, `true`, `"x"`, `["python"]`,
//! `{ temperature = 0.7 }`); text that is not a TOML value is taken as a string, so `run.name=exp1` works.
//! Tables merge key by key; any other value (arrays included) replaces the old one. Overrides apply in
//! order, and each must leave a configuration that deserialises, so an unknown key is an error naming the
//! key and the override. The result is validated.
use super::RunConfig;
use anyhow::{anyhow, bail, Context, Result};
use toml::{Table, Value};

impl RunConfig {
    pub fn with_overrides<S: AsRef<str>>(&self, overrides: &[S]) -> Result<RunConfig> {
        let mut root = match Value::try_from(self).context("serialising the run configuration")? {
            Value::Table(t) => t,
            _ => unreachable!("a struct serialises to a table"),
        };
        for o in overrides {
            let o = o.as_ref();
            apply(&mut root, o).map_err(|e| anyhow!("override `{o}`: {e}"))?;
            Value::Table(root.clone()).try_into::<RunConfig>().map_err(|e| anyhow!("override `{o}`: {e}"))?;
        }
        let cfg: RunConfig = Value::Table(root).try_into()?;
        cfg.validate().map_err(|e| anyhow!("invalid run configuration after overrides:\n{e}"))?;
        Ok(cfg)
    }
}

fn apply(root: &mut Table, o: &str) -> Result<()> {
    let Some((key, value)) = o.split_once('=') else { bail!("expected KEY=VALUE") };
    let (key, value) = (key.trim(), value.trim());
    if o.contains(['\n', '\r']) {
        bail!("line breaks are not allowed");
    }
    let (target, key) = match key.strip_prefix("agents[") {
        None => (root, key),
        Some(rest) => {
            let (sel, rest) = rest.split_once(']').ok_or_else(|| anyhow!("missing `]` after agents["))?;
            let key = rest.strip_prefix('.').ok_or_else(|| anyhow!("expected `.KEY` after agents[{sel}]"))?;
            let Some(Value::Array(agents)) = root.get_mut("agents") else { bail!("no agents to override") };
            let n = agents.len();
            let idx = sel
                .parse::<usize>()
                .ok()
                .or_else(|| agents.iter().position(|a| a.get("name").and_then(Value::as_str) == Some(sel)))
                .filter(|&i| i < n)
                .ok_or_else(|| anyhow!("no agent `{sel}`: use an index below {n} or an agent name"))?;
            let Value::Table(agent) = &mut agents[idx] else { bail!("agents[{idx}] is not a table") };
            (agent, key)
        }
    };
    merge(target, parse_assignment(key, value)?);
    Ok(())
}

/// `key = value` as a TOML table; a value that is not TOML becomes a string.
fn parse_assignment(key: &str, value: &str) -> Result<Table> {
    if let Ok(t) = toml::from_str(&format!("{key} = {value}")) {
        return Ok(t);
    }
    let quoted = Value::String(value.to_string());
    toml::from_str(&format!("{key} = {quoted}")).map_err(|e| anyhow!("`{key}` is not a TOML key: {e}"))
}

fn merge(dst: &mut Table, src: Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(Value::Table(d)), Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}
