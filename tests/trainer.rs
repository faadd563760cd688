//! The `Trainer` (one agent's REINFORCE++ update): rewards move the policy the right way, packing and
//! micro-batching do not change the update, runs are reproducible, resuming from saved optimizer state
//! continues exactly, fully masked batches take no step, and bad samples are errors.
mod common;
use mappa::config::Arch;
use mappa::cpu::CpuModel;
use mappa::optim::{AdamWConfig, LrSchedule};
use mappa::rl::{AdvantageConfig, PgLossConfig};
use mappa::trainer::{Sample, Trainer, TrainerConfig};

/// Mini-batches of 3 of the 4 samples: two optimizer steps per `train_step`, so the shuffle matters.
fn config(lr: f32, micro_batch_tokens: usize) -> TrainerConfig {
    TrainerConfig {
        advantage: AdvantageConfig::default(),
        loss: PgLossConfig::default(),
        adamw: AdamWConfig::default(),
        schedule: LrSchedule { base_lr: lr, warmup_steps: 0, total_steps: 100, min_lr_ratio: 1.0 },
        max_grad_norm: 1.0,
        samples_per_optimizer_step: 3,
        epochs: 1,
        micro_batch_tokens,
        temperature: 1.0,
        recompute: false,
    }
}

fn model() -> CpuModel {
    CpuModel::new(&common::tiny_model(Arch::Qwen2, 7)).unwrap()
}

/// A sample whose old log-probs are the model's own (as after a rollout with these weights).
fn sample(m: &CpuModel, context: &[u32], action: &[u32], reward: f32) -> Sample {
    let tokens = [context, action].concat();
    let positions: Vec<usize> = (context.len() - 1..tokens.len() - 1).collect();
    let logp_old = m.sequence_logprobs(&tokens, &[tokens.len()], &positions, 1.0).unwrap();
    Sample { tokens, prompt_len: context.len(), logp_old, reward, truncated: false }
}

fn action_logp(m: &CpuModel, s: &Sample) -> f32 {
    let positions: Vec<usize> = (s.prompt_len - 1..s.tokens.len() - 1).collect();
    m.sequence_logprobs(&s.tokens, &[s.tokens.len()], &positions, 1.0).unwrap().iter().sum()
}

/// Two answers to the same context, one rewarded 10 and one 0, plus two unrelated samples.
fn samples(m: &CpuModel) -> Vec<Sample> {
    vec![
        sample(m, &[5, 6, 7, 8], &[20, 21, 22], 10.0),
        sample(m, &[5, 6, 7, 8], &[30, 31], 0.0),
        sample(m, &[9, 10, 11], &[40, 41, 42, 43], 5.0),
        sample(m, &[12, 13], &[50], 3.0),
    ]
}

#[test]
fn rewards_move_the_policy_toward_the_better_action() {
    let reference = model();
    let mut t = Trainer::new(model(), config(1e-3, 4096)).unwrap();
    let s0 = samples(&t.model);
    let (good0, bad0) = (action_logp(&t.model, &s0[0]), action_logp(&t.model, &s0[1]));
    for step in 0..5 {
        let s = samples(&t.model); // a fresh rollout: old log-probs from the current weights
        let stats = t.train_step(&s, &reference, step).unwrap();
        assert_eq!((stats.samples, stats.optimizer_steps), (4, 2));
        assert!(stats.grad_norm > 0.0 && stats.lr == 1e-3);
    }
    let (good, bad) = (action_logp(&t.model, &s0[0]), action_logp(&t.model, &s0[1]));
    assert!(good > good0 + 0.01, "rewarded action: log-prob {good0} -> {good}");
    assert!(bad < bad0 - 0.01, "unrewarded action: log-prob {bad0} -> {bad}");
}

#[test]
fn packing_does_not_change_the_update() {
    let reference = model();
    let run = |budget| {
        let mut t = Trainer::new(model(), config(1e-3, budget)).unwrap();
        let s = samples(&t.model);
        let stats = t.train_step(&s, &reference, 1).unwrap();
        (stats, t.model.flat().to_vec())
    };
    // Each sample alone versus all four in one packed forward pass: the same loss and gradient (its norm
    // is a sensitive aggregate: a mis-weighted micro-batch changes it), up to f32 summation order.
    let ((a, alone), (b, packed)) = (run(1), run(4096));
    assert!((a.loss - b.loss).abs() <= 1e-6 * a.loss.abs().max(1.0), "loss {} vs {}", a.loss, b.loss);
    assert!((a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm, "grad norm {} vs {}", a.grad_norm, b.grad_norm);
    // AdamW's first step is about lr * sign(g), so entries whose gradient is ~0 may differ, but by far
    // less than a step.
    let worst = alone.iter().zip(&packed).fold(0f32, |w, (a, b)| w.max((a - b).abs()));
    assert!(worst < 0.05 * 1e-3, "weights differ by {worst}");
    assert_ne!(alone, model().flat(), "the step changed nothing");
}

#[test]
fn same_seed_same_weights_and_resume_continues_exactly() {
    let reference = model();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(model(), config(1e-3, 4096)).unwrap();
    let mut b = Trainer::new(model(), config(1e-3, 4096)).unwrap();
    let s = samples(&a.model);
    a.train_step(&s, &reference, 4).unwrap();
    b.train_step(&s, &reference, 4).unwrap();
    assert_eq!(a.model.flat(), b.model.flat());

    // Save after one step, rebuild from the saved weights and optimizer state, take the next step both ways.
    a.save_optimizer(&dir.path().join("opt.safetensors")).unwrap();
    let mut loaded = common::tiny_model(Arch::Qwen2, 7);
    loaded.weights = a.model.to_weights();
    let mut resumed =
        Trainer::resume(CpuModel::new(&loaded).unwrap(), config(1e-3, 4096), &dir.path().join("opt.safetensors"))
            .unwrap();
    assert_eq!(resumed.optimizer_steps(), 2);
    let s2 = samples(&a.model);
    let x = a.train_step(&s2, &reference, 5).unwrap();
    let y = resumed.train_step(&s2, &reference, 5).unwrap();
    assert_eq!(a.model.flat(), resumed.model.flat());
    assert_eq!((x.loss, x.grad_norm), (y.loss, y.grad_norm));
}

#[test]
fn fully_masked_batch_takes_no_step() {
    let reference = model();
    let mut t = Trainer::new(model(), config(1e-3, 4096)).unwrap();
    let mut s = samples(&t.model);
    s.iter_mut().for_each(|x| x.truncated = true);
    let stats = t.train_step(&s, &reference, 0).unwrap();
    assert_eq!((stats.optimizer_steps, stats.tokens), (0, 0));
    assert_eq!(t.model.flat(), model().flat());
}

#[test]
fn bad_samples_are_errors() {
    let reference = model();
    let mut t = Trainer::new(model(), config(1e-3, 4096)).unwrap();
    let mut s = samples(&t.model);
    s[2].logp_old.pop();
    let e = t.train_step(&s, &reference, 0).unwrap_err().to_string();
    assert!(e.contains("sample 2"), "{e}");
    let mut s = samples(&t.model);
    s[1].prompt_len = s[1].tokens.len();
    assert!(t.train_step(&s, &reference, 0).is_err(), "a sample without action tokens");
}
