//! The Jinja environment every template we render starts from: chat templates (from model files), agent
//! prompts and the coach prompt (from run configs). Rendering runs on fuel, one unit per instruction, so a
//! template that never stops (a loop over a huge range, nested loops) fails with an error instead of
//! hanging a run or a server. The budget is far above what a real template spends on a long conversation.
use minijinja::Environment;

/// Instructions one render may execute.
pub const FUEL: u64 = 50_000_000;

/// A new environment with the fuel budget set.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_that_does_not_stop_runs_out_of_fuel() {
        let mut env = environment();
        let endless = "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";
        env.add_template("endless", endless).unwrap();
        let err = env.get_template("endless").unwrap().render(()).unwrap_err();
        assert_eq!(err.kind(), minijinja::ErrorKind::OutOfFuel, "{err}");
    }

    #[test]
    fn a_long_conversation_renders_within_the_budget() {
        // ChatML over 20,000 messages of the shape real templates loop over.
        let mut env = environment();
        let chatml =
            "{% for m in messages %}{% if m.role == 'system' %}<|im_start|>system\n{{ m.content }}<|im_end|>\n\
                      {% else %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endif %}{% endfor %}\
                      {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        env.add_template("chat", chatml).unwrap();
        let messages: Vec<_> = (0..20_000)
            .map(|i| minijinja::context! { role => if i % 2 == 0 { "user" } else { "assistant" }, content => "hello" })
            .collect();
        let text =
            env.get_template("chat").unwrap().render(minijinja::context! { messages, add_generation_prompt => true });
        assert_eq!(text.unwrap().matches("<|im_start|>").count(), 20_001);
    }
}
