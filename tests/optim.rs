//! The CPU reference optimizer (`mappa::optim`) against PyTorch and against hand-derived numbers.
//!
//! `tests/data/adamw_reference.json` (from `tools/make_adamw_fixture.py`) records 10 steps of
//! `torch.optim.AdamW` with `clip_grad_norm_` and transformers' cosine-with-min-lr schedule; the replay
//! feeds the recorded gradients through `clip_grad_norm`, `LrSchedule` and `AdamW` and compares every norm,
//! LR and parameter. The rest pins the schedule, clipping edge cases, exact save/restore and error paths.
use mappa::optim::{clip_grad_norm, warmup_steps, AdamW, AdamWConfig, LrSchedule};
use serde_json::Value;
use std::path::Path;

/// Asserts |actual - expected| <= rel * |expected| + abs for each element.
fn assert_close<E: Copy + Into<f64>>(actual: &[f32], expected: &[E], rel: f64, abs: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (f64::from(a), e.into());
        assert!((a - e).abs() <= rel * e.abs() + abs, "{what}[{i}]: {a} vs {e} (tolerance {rel} x + {abs})");
    }
}

/// Asserts an f32 learning rate is within 1e-7 relative of the exact (f64) value: half an f32 ulp plus slack.
fn assert_lr(actual: f32, expected: f64, what: &str) {
    assert!((f64::from(actual) - expected).abs() <= 1e-7 * expected, "{what}: lr {actual} vs {expected}");
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn as_mut(vs: &mut [Vec<f32>]) -> Vec<&mut [f32]> {
    vs.iter_mut().map(Vec::as_mut_slice).collect()
}

fn as_ref(vs: &[Vec<f32>]) -> Vec<&[f32]> {
    vs.iter().map(Vec::as_slice).collect()
}

#[test]
fn replays_torch_adamw_trajectory() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/adamw_reference.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = &fixture["config"];
    let f = |key: &str| c[key].as_f64().unwrap();
    let schedule = LrSchedule {
        base_lr: f("lr") as f32,
        warmup_steps: c["warmup_steps"].as_u64().unwrap(),
        total_steps: c["total_steps"].as_u64().unwrap(),
        min_lr_ratio: f("min_lr_rate") as f32,
    };
    let config = AdamWConfig {
        betas: (c["betas"][0].as_f64().unwrap() as f32, c["betas"][1].as_f64().unwrap() as f32),
        eps: f("eps") as f32,
        weight_decay: f("weight_decay") as f32,
    };
    let names: Vec<&str> = fixture["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let mut params: Vec<Vec<f32>> = names.iter().map(|n| floats(&fixture["initial"][n])).collect();
    let mut adamw = AdamW::new(names.iter().zip(&params).map(|(n, p)| (*n, p.len())), config).unwrap();

    let steps = fixture["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 10);
    let (mut clipped, mut bit_exact, mut total) = (0, 0, 0);
    for (t, s) in steps.iter().enumerate() {
        let mut grads: Vec<Vec<f32>> = names.iter().map(|n| floats(&s["grads"][n])).collect();
        let norm = clip_grad_norm(&mut as_mut(&mut grads), f("max_norm") as f32);
        assert_close(&[norm], &[s["grad_norm"].as_f64().unwrap()], 1e-6, 0.0, &format!("step {t} norm"));
        clipped += usize::from(norm > 1.0);
        let lr = schedule.lr(t as u64);
        assert_lr(lr, s["lr"].as_f64().unwrap(), &format!("step {t}"));
        adamw.step(&mut as_mut(&mut params), &as_ref(&grads), lr).unwrap();
        for (n, p) in names.iter().zip(&params) {
            let expected = floats(&s["params_after"][n]);
            // A parameter's error is an error in its updates (each at most ~lr), so near zero allow 1e-6 x lr.
            assert_close(p, &expected, 1e-6, 1e-6 * f("lr"), &format!("step {t} {n}"));
            bit_exact += p.iter().zip(&expected).filter(|(a, b)| a == b).count();
            total += p.len();
        }
    }
    assert_eq!(adamw.step_count(), 10);
    assert!(clipped > 0 && clipped < 10, "the fixture should exercise both sides of clipping");
    println!("{bit_exact} of {total} parameter values bit-identical to PyTorch");
}

/// Two steps on four elements, worked out by hand from the textbook form (lr 0.1, wd 0.1, betas 0.9/0.95,
/// eps 1e-8). Step 1: p *= 0.99; m_hat = g and v_hat = g^2, so p -= 0.1 * g / (|g| + 1e-8):
///   [1, -0.5, 0.25, 2] -> [0.99 - 0.099999998, -0.495 + 0.099999996, 0.2475 - 0.05, 1.98]
/// (element 2 has g = 1e-8 = eps, so its update is lr / 2; element 3 has g = 0 and only decays).
/// Step 2: m = 0.09 g1 + 0.1 g2, v = 0.0475 g1^2 + 0.05 g2^2, bias corrections 0.19 and 0.0975; e.g.
/// element 3: 1.98 * 0.99 - 0.1 * (0.2 / 0.19) / sqrt(0.2 / 0.0975) = 1.9602 - 0.073496 = 1.886704, and
/// element 2 again moves by exactly lr / 2 = 0.05 (0.1975 * 0.99 - 0.05), which only holds when eps is
/// added to sqrt(v_hat) rather than to sqrt(v).
#[test]
fn hand_computed_two_steps() {
    let config = AdamWConfig { betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.1 };
    let mut adamw = AdamW::new([("w", 4)], config).unwrap();
    let mut p = vec![1.0, -0.5, 0.25, 2.0];
    adamw.step(&mut [&mut p], &[&[0.5, -0.25, 1e-8, 0.0]], 0.1).unwrap();
    assert_close(&p, &[0.890000002f64, -0.395000004, 0.1975, 1.98], 1e-6, 0.0, "step 1");
    adamw.step(&mut [&mut p], &[&[0.5, 0.25, 1e-8, 2.0]], 0.1).unwrap();
    assert_close(&p, &[0.781100004f64, -0.396313162, 0.145525, 1.886704], 1e-6, 0.0, "step 2");
}

#[test]
fn schedule_warmup_cosine_and_floor() {
    let s = LrSchedule { base_lr: 1e-3, warmup_steps: 10, total_steps: 110, min_lr_ratio: 0.1 };
    // Expected values as exact fractions of the (f32) base LR.
    let of_base = |factor: f64| f64::from(s.base_lr) * factor;
    assert_eq!(s.lr(0), 0.0);
    assert_lr(s.lr(5), of_base(0.5), "mid warm-up");
    assert_eq!(s.lr(10), s.base_lr, "end of warm-up");
    // Halfway through the cosine: 0.5 * (1 + cos(pi/2)) = 0.5, so 0.1 + 0.9 * 0.5 = 0.55 of base.
    assert_lr(s.lr(60), of_base(0.55), "halfway");
    assert_lr(s.lr(110), of_base(0.1), "end");
    assert_eq!(s.lr(111), s.lr(110));
    assert_eq!(s.lr(10_000), s.lr(110));
    // Monotone: up through warm-up, down through the cosine.
    assert!((1..=10).all(|t| s.lr(t) > s.lr(t - 1)));
    assert!((11..=110).all(|t| s.lr(t) < s.lr(t - 1)));

    // No warm-up starts at the peak; a run no longer than its warm-up is floored right after it.
    assert_eq!(LrSchedule { warmup_steps: 0, ..s }.lr(0), 1e-3);
    assert_eq!(LrSchedule { total_steps: 5, ..s }.lr(12), s.lr(110), "short run");
}

#[test]
fn warmup_rounds_up_and_mappa_defaults() {
    assert_eq!(warmup_steps(10, 0.03), 1);
    assert_eq!(warmup_steps(100, 0.03), 3);
    assert_eq!(warmup_steps(101, 0.03), 4);
    assert_eq!(warmup_steps(0, 0.03), 0);
    let s = LrSchedule::mappa(200);
    assert_eq!((s.base_lr, s.warmup_steps, s.total_steps, s.min_lr_ratio), (1e-6, 6, 200, 0.1));
    let c = AdamWConfig::default();
    assert_eq!((c.betas, c.eps, c.weight_decay), ((0.9, 0.95), 1e-8, 0.0));
}

#[test]
fn clip_leaves_small_gradients_alone() {
    let mut a = vec![0.3f32, -0.4];
    let mut b = vec![0.0f32; 3];
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
    assert_close(&[norm], &[0.5], 1e-7, 0.0, "norm");
    assert_eq!((a, b), (vec![0.3, -0.4], vec![0.0; 3]));
}

#[test]
fn clip_scales_large_gradients_to_max_norm() {
    let mut a = vec![3.0f32, 0.0];
    let mut b = vec![-4.0f32; 1];
    let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
    assert_eq!(norm, 5.0);
    assert_close(&[a[0], b[0]], &[0.6, -0.8], 1e-6, 0.0, "clipped");
    let after = clip_grad_norm(&mut [&mut a, &mut b], 2.0);
    assert_close(&[after], &[1.0], 1e-6, 0.0, "norm after clipping");
}

#[test]
fn clip_zero_gradients() {
    let mut a = vec![0.0f32; 4];
    assert_eq!(clip_grad_norm(&mut [&mut a], 1.0), 0.0);
    assert_eq!(a, vec![0.0; 4]);
    assert_eq!(clip_grad_norm(&mut [], 1.0), 0.0);
}

#[test]
fn clip_non_finite_norm_leaves_gradients_unchanged() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut a = vec![10.0f32, bad];
        let norm = clip_grad_norm(&mut [&mut a], 1.0);
        assert!(!norm.is_finite(), "{bad}: norm {norm}");
        assert_eq!(a[0], 10.0);
    }
}

#[test]
fn clip_norm_independent_of_thread_count() {
    // Several chunks per tensor, values spanning magnitudes so summation order would show.
    let grads: Vec<Vec<f32>> = (0..3)
        .map(|k| (0..70_000 + k).map(|i| ((i * 7919 + k) % 1000) as f32 * 1.001f32.powi(i % 500)).collect())
        .collect();
    let norms: Vec<f32> = [1, 2, 5]
        .iter()
        .map(|&threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| clip_grad_norm(&mut as_mut(&mut grads.clone()), f32::INFINITY))
        })
        .collect();
    assert!(norms.iter().all(|n| n.to_bits() == norms[0].to_bits()), "{norms:?}");
    let exact = grads.iter().flatten().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    assert_close(&norms[..1], &[exact], 1e-6, 0.0, "norm");
}

/// Deterministic pseudo-random gradients for step `t`.
fn grads_at(t: u32, sizes: &[usize]) -> Vec<Vec<f32>> {
    sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| ((i as f32 + 1.3 * k as f32) * 0.37 + t as f32).sin()).collect())
        .collect()
}

#[test]
fn save_and_restore_continue_bit_identically() {
    let sizes = [40_000, 7, 0];
    let names = ["layers.0.weight", "layers.0.bias", "empty"];
    let config = AdamWConfig { betas: (0.9, 0.95), eps: 1e-8, weight_decay: 0.01 };
    let schedule = LrSchedule { base_lr: 1e-3, warmup_steps: 2, total_steps: 10, min_lr_ratio: 0.1 };
    let init: Vec<Vec<f32>> = sizes.iter().map(|&n| (0..n).map(|i| (i as f32 * 0.01).cos()).collect()).collect();
    let run = |adamw: &mut AdamW, params: &mut Vec<Vec<f32>>, steps: std::ops::Range<u32>| {
        for t in steps {
            let mut g = grads_at(t, &sizes);
            clip_grad_norm(&mut as_mut(&mut g), 1.0);
            adamw.step(&mut as_mut(params), &as_ref(&g), schedule.lr(u64::from(t))).unwrap();
        }
    };

    let mut straight = AdamW::new(names.into_iter().zip(sizes), config).unwrap();
    let mut straight_params = init.clone();
    run(&mut straight, &mut straight_params, 0..10);

    let mut first = AdamW::new(names.into_iter().zip(sizes), config).unwrap();
    let mut params = init;
    run(&mut first, &mut params, 0..5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optim.safetensors");
    first.save(&path).unwrap();
    first.save(&path).unwrap(); // overwriting an existing file works too
    let mut resumed = AdamW::load(&path).unwrap();
    assert_eq!(resumed, first);
    assert_eq!((resumed.step_count(), resumed.names()), (5, &names.map(String::from)[..]));
    run(&mut resumed, &mut params, 5..10);

    assert_eq!(resumed, straight);
    let bits = |ps: &[Vec<f32>]| ps.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&params), bits(&straight_params));
}

#[test]
fn step_rejects_mismatched_sizes_without_touching_state() {
    let mut adamw = AdamW::new([("a", 3), ("b", 2)], AdamWConfig::default()).unwrap();
    let before = adamw.clone();
    let (mut a, mut b) = (vec![1.0f32; 3], vec![1.0f32; 2]);
    let (ga, gb) = (vec![0.5f32; 3], vec![0.5f32; 2]);
    let err = adamw.step(&mut [&mut a], &[&ga], 1e-3).unwrap_err();
    assert!(err.to_string().contains("got 1 parameters, expected 2"), "{err}");
    let err = adamw.step(&mut [&mut a, &mut b], &[&ga, &ga], 1e-3).unwrap_err();
    assert!(err.to_string().contains("\"b\""), "{err}");
    let err = adamw.step(&mut [&mut b, &mut a], &[&gb, &ga], 1e-3).unwrap_err();
    assert!(err.to_string().contains("\"a\""), "{err}");
    assert_eq!(adamw, before);
    assert_eq!((a, b), (vec![1.0; 3], vec![1.0; 2]));

    assert!(AdamW::new([("a", 1), ("a", 2)], AdamWConfig::default()).is_err());
    assert!(AdamW::new([("", 1)], AdamWConfig::default()).is_err());
}

#[test]
fn load_rejects_truncated_or_missing_files() {
    let mut adamw = AdamW::new([("w", 64)], AdamWConfig::default()).unwrap();
    let mut w = vec![0.5f32; 64];
    adamw.step(&mut [&mut w], &[&[0.25; 64]], 1e-3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optim.safetensors");
    adamw.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 1, bytes.len() - 256, 12, 3, 0] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(AdamW::load(&path).is_err(), "truncated to {cut} bytes");
    }
    assert!(AdamW::load(&dir.path().join("missing.safetensors")).is_err());
    // Not written by `save`: a valid safetensors file without the optimizer header.
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &[0; 4]).unwrap();
    safetensors::serialize_to_file([("w.exp_avg", view)], None, &path).unwrap();
    assert!(AdamW::load(&path).is_err());
}
