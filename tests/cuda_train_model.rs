//! SmolLM2-135M training on the CUDA backend against the CPU backend: scored log-probs and every
//! parameter's gradient, the same gradients with layers recomputed, ten optimizer steps, two GPU runs that
//! must agree bit for bit, and a resumed step that repeats the continued one exactly. Skips (saying so)
//! without a device.
//!
//! The CPU model here holds the same bf16-rounded weights as the GPU, so only the arithmetic differs: the
//! GPU rounds every product's input (activations, gradients of activations) to bf16 and sums in another
//! order. The bounds were set before the first GPU run, from bf16's relative rounding of 2^-9 compounding
//! over 30 layers: a few percent of a gradient tensor's norm, a few hundredths of a log-prob.
mod common;
use common::gpu::gpu_or_skip;
use mappa::cpu::{CpuBackend, CpuModel};
use mappa::cuda::model::CudaModel;
use mappa::hf::write_dir;
use mappa::loader::LoadedModel;
use mappa::model::{load_for_training, Backend, Model, Packed};
use mappa::optim::AdamWConfig;
use mappa::run::checkpoint::OPTIMIZER_FILE;
use mappa::tensor::DType;

/// Largest |gpu - cpu| of a scored log-prob, and the mean.
const LOGP_MAX_ABS: f32 = 0.3;
const LOGP_MEAN_ABS: f32 = 0.03;
/// Each parameter's gradient: ||gpu - cpu|| / ||cpu||.
const GRAD_REL_L2: f64 = 0.05;
/// The loss over ten steps: |gpu - cpu| / |cpu| at every step.
const LOSS_REL: f64 = 0.02;

struct Batch {
    tokens: Vec<u32>,
    seq_lens: Vec<usize>,
    positions: Vec<usize>,
    coef: Vec<f32>,
}

impl Batch {
    /// Three chat prompts of ragged lengths, every position with a next token scored, random coefficients.
    fn new() -> Batch {
        let (_, tok) = common::smollm2();
        let (mut tokens, mut seq_lens, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for (i, reps) in [(0usize, 0usize), (1, 9), (2, 3)] {
            let facts = "Apples are red. Bananas are yellow. The sky is blue. ".repeat(reps);
            let msg = mappa::tokenizer::ChatMessage::new("user", &format!("{facts}Question {i}: name a colour."));
            let seq = tok.encode_chat(&[msg]).unwrap();
            positions.extend(tokens.len()..tokens.len() + seq.len() - 1);
            seq_lens.push(seq.len());
            tokens.extend(seq);
        }
        let coef = common::gpu::random_bf16(positions.len(), -1.0, 1.0, 7);
        Batch { tokens, seq_lens, positions, coef }
    }

    fn packed(&self) -> Packed<'_> {
        Packed { tokens: &self.tokens, seq_lens: &self.seq_lens, positions: &self.positions }
    }
}

fn models(test: &str) -> Option<(CudaModel, CpuModel)> {
    gpu_or_skip(test)?;
    let loaded = mappa::loader::load(&common::smollm2_gguf()).unwrap();
    let gpu = CudaModel::new(&loaded).unwrap();
    let mut cpu = CpuModel::new(&loaded).unwrap();
    cpu.flat_mut().iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
    Some((gpu, cpu))
}

#[test]
fn smollm2_scores_and_gradients_match_cpu() {
    let Some((mut gpu, cpu)) = models("smollm2_scores_and_gradients_match_cpu") else { return };
    let b = Batch::new();
    let want = cpu.sequence_logprobs(&b.tokens, &b.seq_lens, &b.positions, 1.0).unwrap();
    let got = gpu.sequence_logprobs(b.packed(), 1.0).unwrap();
    let diffs: Vec<f32> = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).collect();
    let (max, mean) = (diffs.iter().fold(0f32, |m, &x| m.max(x)), diffs.iter().sum::<f32>() / diffs.len() as f32);
    println!("log-probs over {} positions: max |gpu - cpu| {max:.4}, mean {mean:.5}", diffs.len());
    assert!(max <= LOGP_MAX_ABS && mean <= LOGP_MEAN_ABS, "log-probs: max {max}, mean {mean}");

    let tape = cpu.forward_train(&b.tokens, &b.seq_lens, false).unwrap();
    let scores = cpu.score(&tape, &b.positions, 1.0).unwrap();
    let mut want_g = vec![0f32; cpu.param_len()];
    cpu.backward(tape, &scores, &b.coef, &mut want_g).unwrap();
    gpu.zero_grad();
    let coef = b.coef.clone();
    gpu.forward_backward(b.packed(), 1.0, false, &mut |_: &[f32]| Ok(coef.clone())).unwrap();
    let got_g = gpu.gradients().unwrap();
    let mut worst = (0f64, String::new());
    for p in cpu.params() {
        let (g, w) = (&got_g[p.range.clone()], &want_g[p.range.clone()]);
        let err: f64 = g.iter().zip(w).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = w.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        let rel = err / norm.max(1e-30);
        if rel > worst.0 {
            worst = (rel, p.name.clone());
        }
        assert!(rel <= GRAD_REL_L2, "{}: gradient relative error {rel:.4} (norm {norm:.3e})", p.name);
    }
    println!("gradients: worst relative L2 error {:.4} ({})", worst.0, worst.1);
}

/// Recomputing layer internals in the backward (`recompute`) runs the same kernels on the same inputs, so
/// the gradients equal those of a pass that kept every activation, bit for bit.
#[test]
fn smollm2_recompute_gives_the_same_gradients_bitwise() {
    let Some((mut gpu, _)) = models("smollm2_recompute_gives_the_same_gradients_bitwise") else { return };
    let b = Batch::new();
    let mut grads = |recompute: bool| {
        gpu.zero_grad();
        let coef = b.coef.clone();
        gpu.forward_backward(b.packed(), 1.0, recompute, &mut |_: &[f32]| Ok(coef.clone())).unwrap();
        gpu.gradients().unwrap()
    };
    let kept = grads(false);
    assert!(kept.iter().any(|&g| g != 0.0), "the gradient is not all zero");
    assert!(grads(true) == kept, "recomputed layers give the same gradients");
}

/// One of the trainer's steps on `b` (gradients zeroed, forward + backward, AdamW at lr 1e-5, clipped at
/// 1): the loss Σ coef·logp and the gradient norm.
fn train_step(model: &mut dyn Model, b: &Batch) -> (f64, f32) {
    model.zero_grad();
    let mut loss = 0f64;
    let coef = b.coef.clone();
    let mut loss_fn = |logp: &[f32]| {
        loss = logp.iter().zip(&coef).map(|(&l, &c)| l as f64 * c as f64).sum();
        Ok(coef.clone())
    };
    model.forward_backward(b.packed(), 1.0, false, &mut loss_fn).unwrap();
    let norm = model.optimizer_step(1e-5, 1.0).unwrap();
    (loss, norm)
}

fn assert_same_weights(a: &dyn Model, b: &dyn Model, what: &str) {
    let (wa, wb) = (a.weights().unwrap(), b.weights().unwrap());
    for (name, t) in &wa.tensors {
        assert!(t.bytes() == wb.get(name).unwrap().bytes(), "{name}: {what}");
    }
}

/// Ten AdamW steps on one batch through the model interface (the trainer's path, with the optimizer state
/// parked in host memory and brought back halfway): the losses follow the CPU's, and a second GPU run
/// repeats the first bit for bit, losses and weights.
#[test]
fn smollm2_ten_steps_follow_cpu_and_repeat_bitwise() {
    let Some((gpu_a, cpu)) = models("smollm2_ten_steps_follow_cpu_and_repeat_bitwise") else { return };
    let b = Batch::new();
    let run = |model: &mut dyn Model| -> Vec<f64> {
        model.init_optimizer(AdamWConfig::default(), None).unwrap();
        let mut losses = Vec::new();
        for step in 0..10 {
            if step == 5 {
                // Between updates the GPU parks master weights and moments in host memory: exactly.
                model.park_training_state().unwrap();
            }
            losses.push(train_step(model, &b).0);
        }
        assert_eq!(model.optimizer_steps(), 10);
        losses
    };
    let mut gpu_a: Box<dyn Model> = Box::new(gpu_a);
    let got = run(gpu_a.as_mut());
    let want = run(&mut CpuBackend::from_model(cpu));
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= LOSS_REL * w.abs(), "step {step}: gpu loss {g}, cpu {w}");
    }
    println!("losses, gpu: {got:?}\nlosses, cpu: {want:?}");
    let loaded = mappa::loader::load(&common::smollm2_gguf()).unwrap();
    let mut gpu_b: Box<dyn Model> = Box::new(CudaModel::new(&loaded).unwrap());
    assert_eq!(run(gpu_b.as_mut()), got, "a second GPU run gives the same losses, bit for bit");
    assert_same_weights(gpu_a.as_ref(), gpu_b.as_ref(), "a second GPU run gives the same weights");
}

/// Resume on the GPU as `mappa train --resume` does it: three steps, a checkpoint (the weights through the
/// Hugging Face writer in f32, the optimizer state in its file), then the fourth step two ways, continued
/// and from the checkpoint loaded into a new model. Loss, gradient norm and weights agree bit for bit.
#[test]
fn smollm2_resume_repeats_the_next_step_exactly() {
    if gpu_or_skip("smollm2_resume_repeats_the_next_step_exactly").is_none() {
        return;
    }
    let b = Batch::new();
    let loaded = mappa::loader::load(&common::smollm2_gguf()).unwrap();
    let mut run = load_for_training(&loaded, Backend::Cuda).unwrap();
    run.init_optimizer(AdamWConfig::default(), None).unwrap();
    for _ in 0..3 {
        train_step(run.as_mut(), &b);
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpt = LoadedModel {
        config: run.config().clone(),
        weights: run.weights().unwrap(),
        tokenizer: loaded.tokenizer.clone(),
        path: dir.path().to_path_buf(),
    };
    write_dir(&ckpt, dir.path(), DType::F32).unwrap();
    let opt_file = dir.path().join(OPTIMIZER_FILE);
    run.save_optimizer(&opt_file).unwrap();
    run.park_training_state().unwrap(); // as the trainer does after each update
    let continued = train_step(run.as_mut(), &b);

    let mut resumed = load_for_training(&mappa::loader::load(dir.path()).unwrap(), Backend::Cuda).unwrap();
    resumed.init_optimizer(AdamWConfig::default(), Some(&opt_file)).unwrap();
    assert_eq!(resumed.optimizer_steps(), 3);
    assert_eq!(train_step(resumed.as_mut(), &b), continued, "the resumed step's loss and gradient norm");
    assert_eq!(resumed.optimizer_steps(), 4);
    assert_same_weights(run.as_ref(), resumed.as_ref(), "the resumed step gives the continued step's weights");
}
