//! Agent prompts: each agent's minijinja template (run_config's `prompt`) rendered into its single user
//! message, with the variables listed in [`crate::run_config::PROMPT_VARIABLES`]. The rendered text is
//! trimmed (TOML multi-line strings end with a newline).
use crate::data::Task;
use crate::run_config::RunConfig;
use anyhow::{Context, Result};
use minijinja::{context, Environment, UndefinedBehavior};
use std::collections::BTreeMap;

/// What one agent's prompt is rendered from, besides the task.
pub struct PromptInputs<'a> {
    /// Earlier agents' final outputs (think-stripped where configured), by name.
    pub previous: BTreeMap<&'a str, &'a str>,
    /// Earlier agents' last tool observations by name ("" when none ran).
    pub tool_results: BTreeMap<&'a str, &'a str>,
    /// Sorted file names in the agent's working directory.
    pub files: &'a [String],
}

/// Every agent's compiled prompt template.
pub struct AgentPrompts {
    env: Environment<'static>,
}

impl AgentPrompts {
    pub fn new(cfg: &RunConfig) -> Result<AgentPrompts> {
        let mut env = crate::template::environment();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (i, a) in cfg.agents.iter().enumerate() {
            env.add_template_owned(template_name(i), a.prompt.clone())
                .with_context(|| format!("prompt template of agent `{}`", a.name))?;
        }
        Ok(AgentPrompts { env })
    }

    /// The user message of agent `i`.
    pub fn render(&self, cfg: &RunConfig, i: usize, task: &Task, inputs: &PromptInputs) -> Result<String> {
        let text = self
            .env
            .get_template(&template_name(i))?
            .render(context! {
                task => task.text,
                record => task.record,
                previous => inputs.previous,
                tool_results => inputs.tool_results,
                files => inputs.files,
                agent => cfg.agents[i].name,
                role => cfg.agent_role(i),
            })
            .with_context(|| {
                format!("rendering the prompt of agent `{}` for task `{}`", cfg.agents[i].name, task.id)
            })?;
        Ok(text.trim().to_string())
    }
}

fn template_name(i: usize) -> String {
    format!("agent-{i}")
}
