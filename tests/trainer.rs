//! The `Trainer` (one agent's REINFORCE++ update): rewards move the policy the right way, packing and
//! micro-batching do not change the update, runs are reproducible, resuming from saved optimizer state
//! continues exactly, fully masked batches take no step, and bad samples are errors.
mod common;
use mappa::config::Arch;
use mappa::cpu::CpuBackend;
use mappa::model::{Model, Packed};
use mappa::optim::{AdamWConfig, LrSchedule};
use mappa::rl::{AdvantageConfig, Estimator, PgLossConfig};
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

fn model() -> Box<dyn Model> {
    Box::new(CpuBackend::new(&common::tiny_model(Arch::Qwen2, 7)).unwrap())
}

/// The model's log-probs of the tokens after `from` in `tokens`.
fn logprobs(m: &dyn Model, tokens: &[u32], from: usize) -> Vec<f32> {
    let positions: Vec<usize> = (from - 1..tokens.len() - 1).collect();
    m.sequence_logprobs(Packed { tokens, seq_lens: &[tokens.len()], positions: &positions }, 1.0).unwrap()
}

/// The model's weights, flat, for exact comparisons.
fn flat(m: &dyn Model) -> Vec<f32> {
    m.weights().unwrap().tensors.values().flat_map(|t| t.to_f32()).collect()
}

/// A sample whose old log-probs are the model's own (as after a rollout with these weights).
fn sample(m: &dyn Model, context: &[u32], action: &[u32], reward: f32) -> Sample {
    let tokens = [context, action].concat();
    let logp_old = logprobs(m, &tokens, context.len());
    Sample { tokens, prompt_len: context.len(), logp_old, reward, truncated: false }
}

fn action_logp(m: &dyn Model, s: &Sample) -> f32 {
    logprobs(m, &s.tokens, s.prompt_len).iter().sum()
}

/// Two answers to the same context, one rewarded 10 and one 0, plus two unrelated samples.
fn samples(m: &dyn Model) -> Vec<Sample> {
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
    let mut t = Trainer::new(model(), config(1e-3, 4096), None).unwrap();
    let s0 = samples(t.model.as_ref());
    let (good0, bad0) = (action_logp(t.model.as_ref(), &s0[0]), action_logp(t.model.as_ref(), &s0[1]));
    for step in 0..5 {
        let s = samples(t.model.as_ref()); // a fresh rollout: old log-probs from the current weights
        let stats = t.train_step(&s, reference.as_ref(), step).unwrap();
        assert_eq!((stats.samples, stats.optimizer_steps), (4, 2));
        assert!(stats.grad_norm > 0.0 && stats.lr == 1e-3);
    }
    let (good, bad) = (action_logp(t.model.as_ref(), &s0[0]), action_logp(t.model.as_ref(), &s0[1]));
    assert!(good > good0 + 0.01, "rewarded action: log-prob {good0} -> {good}");
    assert!(bad < bad0 - 0.01, "unrewarded action: log-prob {bad0} -> {bad}");
}

#[test]
fn packing_does_not_change_the_update() {
    let reference = model();
    let run = |budget| {
        let mut t = Trainer::new(model(), config(1e-3, budget), None).unwrap();
        let s = samples(t.model.as_ref());
        let stats = t.train_step(&s, reference.as_ref(), 1).unwrap();
        (stats, flat(t.model.as_ref()))
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
    assert_ne!(alone, flat(model().as_ref()), "the step changed nothing");
}

#[test]
fn same_seed_same_weights_and_resume_continues_exactly() {
    let reference = model();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Trainer::new(model(), config(1e-3, 4096), None).unwrap();
    let mut b = Trainer::new(model(), config(1e-3, 4096), None).unwrap();
    let s = samples(a.model.as_ref());
    a.train_step(&s, reference.as_ref(), 4).unwrap();
    b.train_step(&s, reference.as_ref(), 4).unwrap();
    assert_eq!(flat(a.model.as_ref()), flat(b.model.as_ref()));

    // Save after one step, rebuild from the saved weights and optimizer state, take the next step both ways.
    a.save_optimizer(&dir.path().join("opt.safetensors")).unwrap();
    let mut loaded = common::tiny_model(Arch::Qwen2, 7);
    loaded.weights = a.model.weights().unwrap();
    let resumed_model = Box::new(CpuBackend::new(&loaded).unwrap());
    let mut resumed =
        Trainer::new(resumed_model, config(1e-3, 4096), Some(&dir.path().join("opt.safetensors"))).unwrap();
    assert_eq!(resumed.optimizer_steps(), 2);
    let s2 = samples(a.model.as_ref());
    let x = a.train_step(&s2, reference.as_ref(), 5).unwrap();
    let y = resumed.train_step(&s2, reference.as_ref(), 5).unwrap();
    assert_eq!(flat(a.model.as_ref()), flat(resumed.model.as_ref()));
    assert_eq!((x.loss, x.grad_norm), (y.loss, y.grad_norm));
}

#[test]
fn fully_masked_batch_takes_no_step() {
    let reference = model();
    let mut t = Trainer::new(model(), config(1e-3, 4096), None).unwrap();
    let mut s = samples(t.model.as_ref());
    s.iter_mut().for_each(|x| x.truncated = true);
    let stats = t.train_step(&s, reference.as_ref(), 0).unwrap();
    assert_eq!((stats.optimizer_steps, stats.tokens), (0, 0));
    assert_eq!(flat(t.model.as_ref()), flat(model().as_ref()));
}

#[test]
fn bad_samples_are_errors() {
    let reference = model();
    let mut t = Trainer::new(model(), config(1e-3, 4096), None).unwrap();
    let mut s = samples(t.model.as_ref());
    s[2].logp_old.pop();
    let e = t.train_step(&s, reference.as_ref(), 0).unwrap_err().to_string();
    assert!(e.contains("sample 2"), "{e}");
    let mut s = samples(t.model.as_ref());
    s[1].prompt_len = s[1].tokens.len();
    assert!(t.train_step(&s, reference.as_ref(), 0).is_err(), "a sample without action tokens");
}

#[test]
fn grpo_and_rloo_learn_within_each_group() {
    for estimator in [Estimator::Grpo, Estimator::Rloo] {
        let reference = model();
        let mut cfg = config(1e-3, 4096);
        cfg.advantage.estimator = estimator;
        let mut t = Trainer::new(model(), cfg, None).unwrap();
        let s0 = samples(t.model.as_ref());
        // Samples 0 and 1 answer the same context (rewards 10 and 0); 2 and 3 form a second group.
        let groups = [(0, 0), (0, 0), (1, 0), (1, 0)];
        let (good0, bad0) = (action_logp(t.model.as_ref(), &s0[0]), action_logp(t.model.as_ref(), &s0[1]));
        for step in 0..5 {
            let s = samples(t.model.as_ref());
            let stats = t.train_step_grouped(&s, Some(&groups), reference.as_ref(), step).unwrap();
            assert_eq!((stats.samples, stats.optimizer_steps), (4, 2));
        }
        let (good, bad) = (action_logp(t.model.as_ref(), &s0[0]), action_logp(t.model.as_ref(), &s0[1]));
        assert!(good > good0 + 0.01, "{estimator:?}: rewarded action: log-prob {good0} -> {good}");
        assert!(bad < bad0 - 0.01, "{estimator:?}: unrewarded action: log-prob {bad0} -> {bad}");
        let e = t.train_step_grouped(&s0, Some(&groups[..3]), reference.as_ref(), 0).unwrap_err().to_string();
        assert!(e.contains("3 groups for 4 samples"), "{e}");
    }
}

#[test]
fn without_groups_grpo_and_rloo_have_only_the_kl_to_learn() {
    // Every sample its own group: outcome term 0; with beta 0 the advantages are exactly 0, so AdamW's
    // steps (zero gradient, no weight decay) leave the weights as they were.
    for estimator in [Estimator::Grpo, Estimator::Rloo] {
        let reference = model();
        let mut cfg = config(1e-3, 4096);
        (cfg.advantage.estimator, cfg.advantage.beta) = (estimator, 0.0);
        let mut t = Trainer::new(model(), cfg, None).unwrap();
        let s = samples(t.model.as_ref());
        let stats = t.train_step(&s, reference.as_ref(), 0).unwrap();
        assert_eq!((stats.optimizer_steps, stats.grad_norm), (2, 0.0), "{estimator:?}");
        assert_eq!(flat(t.model.as_ref()), flat(model().as_ref()), "{estimator:?}");
    }
}
