//! The CPU training pass against PyTorch (tools/make_train_fixture.py, transformers 5.24, f32): for the tiny
//! llama (tied head, llama3 rope) and qwen2 (biases, untied head), two packed sequences, the loss
//! L = sum_t coef_t * logp_t over every next-token position. Checked per tensor, llm.c style: the log-probs,
//! every parameter's gradient, and a 10-step AdamW trajectory (weight decay and gradient clipping on) taken
//! through the model interface, as the trainer takes it.
use mappa::cpu::{CpuBackend, CpuModel};
use mappa::model::{Model, Packed};
use mappa::optim::AdamWConfig;
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::PathBuf;

struct Fixture {
    model: CpuModel,
    json: Value,
    tensors: Vec<(String, Vec<f32>)>,
    tokens: Vec<u32>,
    seq_lens: Vec<usize>,
    /// Every position that has a next token in its sequence.
    positions: Vec<usize>,
}

impl Fixture {
    fn load(name: &str) -> Fixture {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name);
        let model = CpuModel::new(&mappa::loader::load(&dir).unwrap()).unwrap();
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("train_reference.json")).unwrap()).unwrap();
        let bytes = std::fs::read(dir.join("train_reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(n, t)| {
                (n.to_string(), t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
            })
            .collect();
        let seq =
            |k: &str| -> Vec<u32> { json[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect() };
        let (a, b) = (seq("seq_a"), seq("seq_b"));
        let seq_lens = vec![a.len(), b.len()];
        let positions = (0..a.len() - 1).chain(a.len()..a.len() + b.len() - 1).collect();
        Fixture { model, json, tensors, tokens: [a, b].concat(), seq_lens, positions }
    }

    fn tensor(&self, name: &str) -> &[f32] {
        &self.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("fixture lacks {name}")).1
    }

    /// logp at every position and the gradient of L, in the arena's layout.
    fn loss_and_grads(&self) -> (Vec<f32>, f64, Vec<f32>) {
        let coef = self.tensor("coef");
        let tape = self.model.forward_train(&self.tokens, &self.seq_lens, false).unwrap();
        let scores = self.model.score(&tape, &self.positions, 1.0).unwrap();
        let loss = scores.logp.iter().zip(coef).map(|(&l, &c)| l as f64 * c as f64).sum();
        let mut grads = vec![0f32; self.model.param_len()];
        self.model.backward(tape, &scores, coef, &mut grads).unwrap();
        (scores.logp.clone(), loss, grads)
    }
}

/// max |a - b| over the tensor, relative to the reference's largest magnitude.
fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0f64, |m, &r| m.max(r.abs() as f64));
    assert!(scale > 0.0, "an all-zero reference tensor checks nothing");
    ours.iter().zip(reference).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale
}

fn check_gradients(name: &str) {
    let f = Fixture::load(name);
    let (logp, loss, grads) = f.loss_and_grads();
    let err = rel_err(&logp, f.tensor("logp"));
    assert!(err < 1e-5, "{name}: logp off by {err:e} (relative)");
    let want = f.json["loss"].as_f64().unwrap();
    assert!((loss - want).abs() < 1e-4 * want.abs().max(1.0), "{name}: loss {loss}, PyTorch {want}");
    let names: Vec<&str> = f.tensors.iter().filter_map(|(n, _)| n.strip_prefix("grad.")).collect();
    assert_eq!(names.len(), f.model.params().len(), "{name}: fixture and model disagree on the parameter list");
    let mut worst = (0f64, String::new());
    for p in f.model.params() {
        let err = rel_err(&grads[p.range.clone()], f.tensor(&format!("grad.{}", p.name)));
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
        // f32 on both sides over 18 positions and 2 layers: ~1e-6 expected; a wrong term is O(1).
        assert!(err < 1e-4, "{name}: gradient of {} off by {err:e} (relative to its largest entry)", p.name);
    }
    eprintln!("{name}: worst gradient error {:.1e} ({})", worst.0, worst.1);
}

#[test]
fn llama_gradients_match_pytorch() {
    check_gradients("tiny-llama");
}

#[test]
fn qwen2_gradients_match_pytorch() {
    check_gradients("tiny-qwen2");
}

/// Ten steps of clip-then-AdamW (lr 1e-2, weight decay 0.1 on every parameter, as torch's default groups),
/// through the model interface: the trainer's path (forward_backward, optimizer_step).
fn check_trajectory(name: &str) {
    let f = Fixture::load(name);
    let a = &f.json["adamw"];
    let num = |v: &Value| v.as_f64().unwrap();
    let cfg = AdamWConfig {
        betas: (num(&a["betas"][0]) as f32, num(&a["betas"][1]) as f32),
        eps: num(&a["eps"]) as f32,
        weight_decay: num(&a["weight_decay"]) as f32,
    };
    let (lr, max_norm) = (num(&a["lr"]) as f32, num(&a["max_grad_norm"]) as f32);
    let coef = f.tensor("coef").to_vec();
    let packed = Packed { tokens: &f.tokens, seq_lens: &f.seq_lens, positions: &f.positions };
    let mut model: Box<dyn Model> = Box::new(CpuBackend::from_model(f.model));
    model.init_optimizer(cfg, None).unwrap();
    let want_loss: Vec<f64> = f.json["trajectory_loss"].as_array().unwrap().iter().map(num).collect();
    let want_norm: Vec<f64> = f.json["trajectory_grad_norm"].as_array().unwrap().iter().map(num).collect();
    for step in 0..=10 {
        let mut loss = 0f64;
        model.zero_grad();
        let mut loss_fn = |logp: &[f32]| {
            loss = logp.iter().zip(&coef).map(|(&l, &c)| l as f64 * c as f64).sum();
            Ok(coef.clone())
        };
        model.forward_backward(packed, 1.0, false, &mut loss_fn).unwrap();
        let tol = 2e-4 * want_loss[step].abs().max(1.0);
        assert!((loss - want_loss[step]).abs() < tol, "{name} step {step}: loss {loss}, PyTorch {}", want_loss[step]);
        if step == 10 {
            break;
        }
        let norm = model.optimizer_step(lr, max_norm).unwrap() as f64;
        assert!(
            (norm - want_norm[step]).abs() < 2e-4 * want_norm[step],
            "{name} step {step}: grad norm {norm}, PyTorch {}",
            want_norm[step]
        );
    }
    assert_eq!(model.optimizer_steps(), 10);
}

#[test]
fn llama_adamw_trajectory_matches_pytorch() {
    check_trajectory("tiny-llama");
}

#[test]
fn qwen2_adamw_trajectory_matches_pytorch() {
    check_trajectory("tiny-qwen2");
}
