//! Tests of the CPU reference for per-action REINFORCE++ advantages and the PPO-clip loss (`mappa::rl`):
//! against plain f64 implementations written here with explicit nested loops (per action, per agent,
//! per token, O(len^2) returns) on seeded random packed batches, against hand-computed numbers, against
//! central finite differences of the loss, and on the edge cases (one-token actions, equal returns,
//! agents without valid tokens, bad segments). GRPO and RLOO: hand-computed groups (boundaries by group
//! id and by agent, masked actions outside the statistics), groups of one, and REINFORCE++ ignoring groups.
// The naive references index token positions on purpose: they mirror the math, not idiomatic Rust.
#![allow(clippy::needless_range_loop)]
use mappa::rl::{
    compute_advantages, pg_loss, Action, AdvantageConfig, Aggregation, Estimator, KlEstimator, PgLossConfig, VAR_EPS,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const AGGREGATIONS: [Aggregation; 3] = [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean, Aggregation::SeqSum];
const ESTIMATORS: [KlEstimator; 3] = [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3];

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * (1.0 + want.abs())
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!(close(got, want, tol), "{what}: got {got}, want {want}");
}

struct Batch {
    logp_old: Vec<f32>,
    logp_ref: Vec<f32>,
    actions: Vec<Action>,
}

/// Samples of 1-3 actions (lengths 1..=20) by `agents` agents, separated by prompt/tool gaps that belong
/// to no action; rewards in [0, 1), 15 % truncated; the action list is shuffled (not sorted by offset).
fn random_batch(rng: &mut ChaCha8Rng, agents: usize) -> Batch {
    let (mut actions, mut t) = (Vec::new(), 0);
    for _ in 0..rng.random_range(4..10) {
        t += rng.random_range(0..6);
        for _ in 0..rng.random_range(1..4) {
            let len = rng.random_range(1..=20);
            let agent = rng.random_range(0..agents);
            actions.push(Action {
                offset: t,
                len,
                agent,
                reward: rng.random(),
                truncated: rng.random_bool(0.15),
                group: actions.len() % 3,
            });
            t += len + rng.random_range(0..3);
        }
    }
    actions.shuffle(rng);
    let logp_old: Vec<f32> = (0..t).map(|_| rng.random_range(-6.0..-0.01)).collect();
    let logp_ref = logp_old.iter().map(|&l| l + rng.random_range(-0.7..0.7)).collect();
    Batch { logp_old, logp_ref, actions }
}

/// KL estimates written from the ratio pi_ref/pi_old rather than from the log-ratio.
fn naive_kl(est: KlEstimator, logp_old: f32, logp_ref: f32) -> f64 {
    let ratio = (logp_ref as f64 - logp_old as f64).exp();
    match est {
        KlEstimator::K1 => -ratio.ln(),
        KlEstimator::K2 => 0.5 * ratio.ln().powi(2),
        KlEstimator::K3 => ratio - 1.0 - ratio.ln(),
    }
}

struct NaiveAdvantages {
    adv: Vec<f64>,
    returns: Vec<f64>,
    mask: Vec<bool>,
    /// Per agent: tokens, mean return, std return, mean reward, mean kl.
    stats: Vec<(usize, f64, f64, f64, f64)>,
}

fn naive_advantages(b: &Batch, agents: usize, cfg: &AdvantageConfig) -> NaiveAdvantages {
    let t = b.logp_old.len();
    let kl = |i: usize| naive_kl(cfg.kl, b.logp_old[i], b.logp_ref[i]);
    let mut returns = vec![0.0; t];
    for a in &b.actions {
        let last = a.offset + a.len - 1;
        for i in a.offset..=last {
            for k in i..=last {
                returns[i] += -(cfg.beta as f64) * kl(k) + if k == last { a.reward as f64 } else { 0.0 };
            }
        }
    }
    let (mut adv, mut mask, mut stats) = (vec![0.0; t], vec![false; t], Vec::new());
    for agent in 0..agents {
        let mine: Vec<&Action> =
            b.actions.iter().filter(|a| a.agent == agent && !(cfg.mask_truncated && a.truncated)).collect();
        let (mut gs, mut kls) = (Vec::new(), Vec::new());
        for a in &mine {
            for i in a.offset..a.offset + a.len {
                gs.push(returns[i]);
                kls.push(kl(i));
            }
        }
        let mean_of = |xs: &[f64]| if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 };
        let mean = mean_of(&gs);
        let var = mean_of(&gs.iter().map(|g| (g - mean).powi(2)).collect::<Vec<_>>());
        let div = if cfg.normalize_std { var.max(VAR_EPS).sqrt() } else { 1.0 };
        for a in &mine {
            for i in a.offset..a.offset + a.len {
                adv[i] = (returns[i] - mean) / div;
                mask[i] = true;
            }
        }
        let rewards: Vec<f64> = mine.iter().map(|a| a.reward as f64).collect();
        stats.push((gs.len(), mean, var.sqrt(), mean_of(&rewards), mean_of(&kls)));
    }
    NaiveAdvantages { adv, returns, mask, stats }
}

#[test]
fn advantages_match_naive_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut checked_tokens = 0;
    for round in 0..6 {
        // Agent 3 never acts: its stats must be all zeros.
        let b = random_batch(&mut rng, 3);
        for kl in ESTIMATORS {
            for normalize_std in [true, false] {
                for mask_truncated in [true, false] {
                    let beta = if round % 2 == 0 { 0.01 } else { 0.3 };
                    let cfg =
                        AdvantageConfig { beta, kl, normalize_std, mask_truncated, estimator: Estimator::ReinforcePp };
                    let got = compute_advantages(&b.logp_old, &b.logp_ref, &b.actions, 4, &cfg).unwrap();
                    let want = naive_advantages(&b, 4, &cfg);
                    let what = format!("round {round} {cfg:?}");
                    assert_eq!(got.mask, want.mask, "{what}");
                    for i in 0..b.logp_old.len() {
                        assert_close(got.returns[i] as f64, want.returns[i], 1e-5, &format!("{what} return {i}"));
                        assert_close(got.adv[i] as f64, want.adv[i], 1e-4, &format!("{what} adv {i}"));
                    }
                    assert_eq!(got.per_agent.len(), 4);
                    for (s, w) in got.per_agent.iter().zip(&want.stats) {
                        assert_eq!(s.tokens, w.0, "{what}");
                        assert_close(s.mean_return as f64, w.1, 1e-5, &what);
                        assert_close(s.std_return as f64, w.2, 1e-5, &what);
                        assert_close(s.mean_reward as f64, w.3, 1e-6, &what);
                        assert_close(s.mean_kl as f64, w.4, 1e-6, &what);
                    }
                    assert_eq!(got.per_agent[3].tokens, 0);
                    checked_tokens += want.mask.iter().filter(|&&m| m).count();
                }
            }
        }
    }
    assert!(checked_tokens > 1000, "too few valid tokens checked: {checked_tokens}");
}

#[test]
fn kl_estimators_hand_values() {
    // d = 0.2 and d = -1: k1 = d, k2 = d^2/2, k3 = exp(-d) - 1 + d.
    for (d, k1, k2, k3) in [(0.2, 0.2, 0.02, 0.018_730_753_077_981_86), (-1.0, -1.0, 0.5, 0.718_281_828_459_045)] {
        assert_close(KlEstimator::K1.eval(d), k1, 1e-14, "k1");
        assert_close(KlEstimator::K2.eval(d), k2, 1e-14, "k2");
        assert_close(KlEstimator::K3.eval(d), k3, 1e-14, "k3");
    }
    assert_eq!(KlEstimator::K3.eval(0.0), 0.0);
}

/// Two actions of one agent over three tokens: A = positions 0..2 (reward 1), B = position 2 (reward 0).
fn tiny() -> (Vec<f32>, Vec<f32>, Vec<Action>) {
    let act = |offset, len, reward| Action { offset, len, agent: 0, reward, truncated: false, group: 0 };
    (vec![-1.0, -0.5, -2.0], vec![-1.2, -0.5, -1.0], vec![act(0, 2, 1.0), act(2, 1, 0.0)])
}

#[test]
fn hand_computed_tiny_case() {
    let (logp_old, logp_ref, actions) = tiny();
    // beta = 0.5, k1: d = [0.2, 0, -1] -> r = [-0.1, 0 + 1, 0.5 + 0] -> G = [0.9, 1.0, 0.5];
    // mean 0.8, population var 0.14/3, A = (G - 0.8) / 0.2160247.
    let cfg = AdvantageConfig { beta: 0.5, ..Default::default() };
    let got = compute_advantages(&logp_old, &logp_ref, &actions, 1, &cfg).unwrap();
    for (g, w) in got.returns.iter().zip([0.9, 1.0, 0.5]) {
        assert_close(*g as f64, w, 1e-6, "return");
    }
    for (g, w) in got.adv.iter().zip([0.462_910_05, 0.925_820_1, -1.388_730_15]) {
        assert_close(*g as f64, w, 1e-6, "advantage");
    }
    assert_eq!(got.mask, vec![true; 3]);
    let s = got.per_agent[0];
    assert_eq!(s.tokens, 3);
    assert_close(s.mean_return as f64, 0.8, 1e-6, "mean_return");
    assert_close(s.std_return as f64, 0.216_024_69, 1e-6, "std_return");
    assert_close(s.mean_reward as f64, 0.5, 1e-7, "mean_reward");
    assert_close(s.mean_kl as f64, -0.8 / 3.0, 1e-6, "mean_kl");
    let unnormalised =
        compute_advantages(&logp_old, &logp_ref, &actions, 1, &AdvantageConfig { normalize_std: false, ..cfg })
            .unwrap();
    for (g, w) in unnormalised.adv.iter().zip([0.1, 0.2, -0.3]) {
        assert_close(*g as f64, w, 1e-6, "mean-only advantage");
    }

    // Loss with A = [1, 2, -0.5] and logp - logp_old = [0.1, 0.3, -0.5]: ratio 1.10517 is inside the clip
    // range; 1.34986 > 1.2 with A > 0 and 0.60653 < 0.8 with A < 0 are clipped: l = [-1.10517, -2.4, 0.4].
    let adv = [1.0, 2.0, -0.5];
    let logp: Vec<f32> = logp_old.iter().zip([0.1, 0.3, -0.5]).map(|(o, x)| o + x).collect();
    let ratio0 = ((logp[0] - logp_old[0]) as f64).exp();
    for (aggregation, loss, g0) in [
        (Aggregation::TokenMean, -1.035_056_97, -ratio0 / 3.0),
        (Aggregation::SeqMeanTokenMean, -0.676_292_73, -ratio0 / 4.0),
        (Aggregation::SeqSum, -1.552_585_46, -ratio0 / 2.0),
    ] {
        let cfg = PgLossConfig { aggregation, ..Default::default() };
        let got = pg_loss(&logp, &logp_old, &logp_ref, &adv, &[true; 3], &actions, &cfg).unwrap();
        assert_close(got.loss as f64, loss, 1e-6, &format!("{aggregation:?} loss"));
        assert_close(got.dlogp[0] as f64, g0, 1e-6, &format!("{aggregation:?} dlogp"));
        assert_eq!(&got.dlogp[1..], &[0.0, 0.0], "clipped tokens carry no gradient");
        assert_close(got.clip_frac as f64, 2.0 / 3.0, 1e-7, "clip_frac");
        assert_close(got.approx_kl as f64, 0.1 / 3.0, 1e-6, "approx_kl");
        assert_eq!(got.tokens, 3);
    }
}

#[test]
fn one_token_actions() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let logp_old: Vec<f32> = (0..6).map(|_| rng.random_range(-4.0..-0.1)).collect();
    let logp_ref: Vec<f32> = logp_old.iter().map(|&l| l + rng.random_range(-0.5..0.5)).collect();
    // Agent 0 acts at 0, 2, 4; agent 1 only at 5 (one token: variance 0, advantage 0).
    let actions: Vec<Action> = [(0, 0.3), (2, 0.9), (4, 0.1), (5, 0.6)]
        .iter()
        .enumerate()
        .map(|(k, &(offset, reward))| Action { offset, len: 1, agent: k / 3, reward, truncated: false, group: 0 })
        .collect();
    for kl in ESTIMATORS {
        let cfg = AdvantageConfig { beta: 0.2, kl, ..Default::default() };
        let got = compute_advantages(&logp_old, &logp_ref, &actions, 2, &cfg).unwrap();
        let g = |a: &Action| a.reward as f64 - 0.2 * naive_kl(kl, logp_old[a.offset], logp_ref[a.offset]);
        for a in &actions {
            assert_close(got.returns[a.offset] as f64, g(a), 1e-6, "one-token return");
        }
        let gs: Vec<f64> = actions[..3].iter().map(g).collect();
        let mean = gs.iter().sum::<f64>() / 3.0;
        let std = (gs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
        for (a, x) in actions[..3].iter().zip(&gs) {
            assert_close(got.adv[a.offset] as f64, (x - mean) / std, 1e-5, "one-token advantage");
        }
        assert_eq!(got.adv[5], 0.0, "a lone one-token action has nothing to be compared with");
        assert_eq!((got.adv[1], got.adv[3], got.mask[1], got.mask[3]), (0.0, 0.0, false, false), "gaps");
        assert_eq!(got.per_agent[1].std_return, 0.0);
    }
}

#[test]
fn equal_returns_give_zero_advantages() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut b = random_batch(&mut rng, 2);
    // No KL (reference = rollout policy) and one reward: every return equals the reward exactly.
    b.logp_ref = b.logp_old.clone();
    for a in &mut b.actions {
        a.reward = 0.7;
    }
    for kl in ESTIMATORS {
        for normalize_std in [true, false] {
            let cfg = AdvantageConfig { kl, normalize_std, ..Default::default() };
            let got = compute_advantages(&b.logp_old, &b.logp_ref, &b.actions, 2, &cfg).unwrap();
            assert!(got.adv.iter().all(|&x| x == 0.0), "{cfg:?}: {:?}", got.adv);
            for s in &got.per_agent {
                assert!(s.tokens > 0);
                assert_eq!((s.mean_return, s.std_return, s.mean_kl), (0.7, 0.0, 0.0));
            }
        }
    }
}

#[test]
fn agent_without_valid_tokens() {
    let act = |offset, len, agent, truncated| Action { offset, len, agent, reward: 0.5, truncated, group: 0 };
    // Agent 0: two normal actions; agent 1: only a truncated one; agent 2: none at all.
    let actions = [act(0, 3, 0, false), act(3, 2, 1, true), act(6, 4, 0, false)];
    let logp_old = vec![-1.0; 10];
    let logp_ref = vec![-1.1; 10];
    let cfg = AdvantageConfig::default();
    let got = compute_advantages(&logp_old, &logp_ref, &actions, 3, &cfg).unwrap();
    for agent in [1, 2] {
        let s = got.per_agent[agent];
        assert_eq!(s.tokens, 0);
        assert_eq!((s.mean_return, s.std_return, s.mean_reward, s.mean_kl), (0.0, 0.0, 0.0, 0.0));
    }
    assert!(got.adv.iter().chain(&got.returns).all(|x| x.is_finite()));
    assert_eq!((got.adv[3], got.adv[4], got.mask[3], got.mask[4]), (0.0, 0.0, false, false));
    assert_close(got.returns[4] as f64, 0.5 - 0.01 * 0.1, 1e-6, "a truncated action still has returns");
    assert_eq!(got.per_agent[0].tokens, 7);

    let kept = compute_advantages(&logp_old, &logp_ref, &actions, 3, &AdvantageConfig { mask_truncated: false, ..cfg })
        .unwrap();
    assert_eq!(kept.per_agent[1].tokens, 2);
    assert!(kept.mask[3] && kept.mask[4]);
}

#[test]
fn higher_reward_gives_higher_advantage() {
    // Four actions of one agent with identical log-probs, differing only in reward.
    let rewards = [0.1, 0.4, 0.7, 1.0];
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let old: Vec<f32> = (0..5).map(|_| rng.random_range(-3.0..-0.1)).collect();
    let rf: Vec<f32> = old.iter().map(|&l| l + rng.random_range(-0.5..0.5)).collect();
    let actions: Vec<Action> = rewards
        .iter()
        .enumerate()
        .map(|(k, &reward)| Action { offset: 5 * k, len: 5, agent: 0, reward, truncated: false, group: 0 })
        .collect();
    let got = compute_advantages(&old.repeat(4), &rf.repeat(4), &actions, 1, &AdvantageConfig::default()).unwrap();
    for j in 0..5 {
        let column: Vec<f32> = (0..4).map(|k| got.adv[5 * k + j]).collect();
        assert!(column.windows(2).all(|w| w[0] < w[1]), "token {j}: {column:?}");
    }
    let mean_adv = |k: usize| got.adv[5 * k..5 * k + 5].iter().sum::<f32>() / 5.0;
    assert!(mean_adv(0) < 0.0 && mean_adv(3) > 0.0);
}

#[test]
fn invalid_segments_are_rejected() {
    let act = |offset, len, agent| Action { offset, len, agent, reward: 1.0, truncated: false, group: 0 };
    let lp = vec![-1.0; 10];
    let cfg = AdvantageConfig::default();
    let err = |actions: &[Action], agents| {
        compute_advantages(&lp, &lp, actions, agents, &cfg).expect_err("should fail").to_string()
    };
    let overlap = err(&[act(5, 3, 0), act(0, 2, 0), act(7, 2, 0)], 1);
    assert!(overlap.contains("action 0") && overlap.contains("action 2") && overlap.contains("overlaps"), "{overlap}");
    let past_end = err(&[act(0, 2, 0), act(8, 3, 0)], 1);
    assert!(past_end.contains("action 1") && past_end.contains("runs past"), "{past_end}");
    assert!(err(&[act(usize::MAX, 2, 0)], 1).contains("action 0"), "offset + len overflow");
    assert!(err(&[act(0, 2, 0), act(3, 0, 0)], 1).contains("action 1 (offset 3) is empty"));
    assert!(err(&[act(0, 2, 0), act(3, 2, 2)], 2).contains("action 1 names agent 2"));
    assert!(compute_advantages(&lp, &lp[..9], &[], 1, &cfg).is_err(), "length mismatch");
    // Adjacent actions are fine.
    assert!(compute_advantages(&lp, &lp, &[act(0, 2, 0), act(2, 8, 0)], 1, &cfg).is_ok());

    let adv = vec![1.0; 10];
    let loss = |mask: &[bool], actions: &[Action], cfg: &PgLossConfig| pg_loss(&lp, &lp, &lp, &adv, mask, actions, cfg);
    let mut stray = vec![false; 10];
    stray[9] = true;
    let e = loss(&stray, &[act(0, 2, 0)], &PgLossConfig::default()).unwrap_err().to_string();
    assert!(e.contains("outside every action"), "{e}");
    let ok_mask = vec![true; 2].into_iter().chain(vec![false; 8]).collect::<Vec<_>>();
    assert!(loss(&ok_mask, &[act(1, 2, 0), act(0, 2, 0)], &PgLossConfig::default()).is_err(), "overlap");
    for bad in [
        PgLossConfig { dual_clip: Some(1.0), ..Default::default() },
        PgLossConfig { eps_low: 1.0, ..Default::default() },
        PgLossConfig { eps_high: -0.1, ..Default::default() },
        PgLossConfig { kl_loss_coef: Some(f32::NAN), ..Default::default() },
    ] {
        assert!(loss(&ok_mask, &[act(0, 2, 0)], &bad).is_err(), "{bad:?}");
    }
    assert!(pg_loss(&lp, &lp, &lp, &adv[..9], &ok_mask, &[], &PgLossConfig::default()).is_err());
}

/// The loss written out per token with min/max/clamp, aggregated with explicit per-action loops.
/// Returns (loss, clip_frac, approx_kl).
fn naive_pg_loss(logp: &[f32], b: &Batch, adv: &[f32], mask: &[bool], cfg: &PgLossConfig) -> (f64, f64, f64) {
    let (mut per_action, mut clipped, mut kl, mut tokens) = (Vec::new(), 0, 0.0, 0);
    for a in &b.actions {
        let (mut sum, mut n) = (0.0, 0);
        for i in (a.offset..a.offset + a.len).filter(|&i| mask[i]) {
            let (lp, old, a_t) = (logp[i] as f64, b.logp_old[i] as f64, adv[i] as f64);
            let ratio = (lp - old).exp();
            let unclipped = ratio * a_t;
            let clip = ratio.clamp(1.0 - cfg.eps_low as f64, 1.0 + cfg.eps_high as f64) * a_t;
            let mut l = -unclipped.min(clip);
            let mut cut = clip < unclipped;
            if let (Some(c), true) = (cfg.dual_clip, a_t < 0.0) {
                cut |= -(c as f64) * a_t < l;
                l = l.min(-(c as f64) * a_t);
            }
            if let Some(coef) = cfg.kl_loss_coef {
                let r = (b.logp_ref[i] as f64 - lp).exp();
                l += coef as f64 * (r - 1.0 - r.ln());
            }
            sum += l;
            n += 1;
            clipped += cut as usize;
            kl += old - lp;
        }
        if n > 0 {
            per_action.push((sum, n));
        }
        tokens += n;
    }
    let seqs = per_action.len() as f64;
    let loss = match cfg.aggregation {
        Aggregation::TokenMean => per_action.iter().map(|p| p.0).sum::<f64>() / tokens as f64,
        Aggregation::SeqMeanTokenMean => per_action.iter().map(|p| p.0 / p.1 as f64).sum::<f64>() / seqs,
        Aggregation::SeqSum => per_action.iter().map(|p| p.0).sum::<f64>() / seqs,
    };
    (loss, clipped as f64 / tokens as f64, kl / tokens as f64)
}

/// Random advantages, a mask keeping ~85 % of action tokens, and logp = logp_old + x with x kept more
/// than `margin` away from every kink of the loss (the clip bounds and, for A < 0, the dual-clip c).
fn random_loss_inputs(
    rng: &mut ChaCha8Rng,
    b: &Batch,
    cfg: &PgLossConfig,
    margin: f64,
) -> (Vec<f32>, Vec<f32>, Vec<bool>) {
    let t = b.logp_old.len();
    let adv: Vec<f32> = (0..t).map(|_| rng.random_range(-2.0..2.0)).collect();
    let mut mask = vec![false; t];
    for a in &b.actions {
        for m in &mut mask[a.offset..a.offset + a.len] {
            *m = rng.random_bool(0.85);
        }
    }
    let kinks = [
        (1.0 - cfg.eps_low as f64).ln(),
        (1.0 + cfg.eps_high as f64).ln(),
        cfg.dual_clip.map_or(9.0, |c| (c as f64).ln()),
    ];
    let logp = b
        .logp_old
        .iter()
        .map(|&old| loop {
            let x: f64 = rng.random_range(-0.7..0.9);
            if kinks.iter().all(|k| (x - k).abs() > margin) {
                break (old as f64 + x) as f32;
            }
        })
        .collect();
    (logp, adv, mask)
}

fn loss_variants() -> Vec<PgLossConfig> {
    let mut out = Vec::new();
    for aggregation in AGGREGATIONS {
        for (dual_clip, kl_loss_coef) in [(None, None), (Some(1.5), None), (None, Some(0.1)), (Some(1.5), Some(0.1))] {
            out.push(PgLossConfig { dual_clip, kl_loss_coef, aggregation, ..Default::default() });
        }
    }
    out
}

#[test]
fn pg_loss_matches_naive_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    for cfg in loss_variants() {
        for _ in 0..3 {
            let b = random_batch(&mut rng, 2);
            let (logp, adv, mask) = random_loss_inputs(&mut rng, &b, &cfg, 0.0);
            let got = pg_loss(&logp, &b.logp_old, &b.logp_ref, &adv, &mask, &b.actions, &cfg).unwrap();
            let (loss, clip_frac, approx_kl) = naive_pg_loss(&logp, &b, &adv, &mask, &cfg);
            assert_close(got.loss as f64, loss, 1e-6, &format!("{cfg:?} loss"));
            assert_close(got.clip_frac as f64, clip_frac, 1e-7, &format!("{cfg:?} clip_frac"));
            assert_close(got.approx_kl as f64, approx_kl, 1e-6, &format!("{cfg:?} approx_kl"));
            assert_eq!(got.tokens, mask.iter().filter(|&&m| m).count());
            assert!(got.clip_frac > 0.0 && got.clip_frac < 1.0);
        }
    }
}

#[test]
fn dlogp_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let h = 2e-2f32;
    for cfg in loss_variants() {
        let b = random_batch(&mut rng, 2);
        let (logp, adv, mask) = random_loss_inputs(&mut rng, &b, &cfg, 2.5 * h as f64);
        let loss_at = |lp: &[f32]| pg_loss(lp, &b.logp_old, &b.logp_ref, &adv, &mask, &b.actions, &cfg).unwrap().loss;
        let got = pg_loss(&logp, &b.logp_old, &b.logp_ref, &adv, &mask, &b.actions, &cfg).unwrap();
        let (mut zero, mut nonzero, mut dual) = (0, 0, 0);
        for i in 0..logp.len() {
            let (mut plus, mut minus) = (logp.clone(), logp.clone());
            plus[i] += h;
            minus[i] -= h;
            let step = plus[i] as f64 - minus[i] as f64;
            let fd = (loss_at(&plus) as f64 - loss_at(&minus) as f64) / step;
            let g = got.dlogp[i] as f64;
            // f32 rounding of the two losses, plus the O(h^2) central-difference error.
            let tol = 8.0 * f32::EPSILON as f64 * (1.0 + got.loss.abs() as f64) / step + 1e-3 * g.abs();
            assert!((fd - g).abs() <= tol, "{cfg:?} token {i}: dlogp {g}, finite difference {fd}");
            if !mask[i] {
                assert_eq!(g, 0.0, "masked token {i}");
            } else if g == 0.0 {
                zero += 1;
            } else {
                nonzero += 1;
            }
            let ratio = ((logp[i] - b.logp_old[i]) as f64).exp();
            dual += (mask[i] && adv[i] < 0.0 && cfg.dual_clip.is_some_and(|c| ratio > c as f64)) as usize;
        }
        assert!(nonzero > 0, "{cfg:?}");
        // With a KL loss term clipped tokens still have a KL gradient; without it they are exactly 0.
        assert_eq!(zero > 0, cfg.kl_loss_coef.is_none(), "{cfg:?}");
        assert_eq!(dual > 0, cfg.dual_clip.is_some(), "{cfg:?}: dual-clip region exercised");
    }
}

#[test]
fn gradient_at_clip_boundaries() {
    // One-token actions, TokenMean: dlogp * N = dl/dlogp of each token on its own.
    let (lo, hi, c) = (0.8f64.ln(), 1.2f64.ln(), 2.0f64.ln());
    let d = 1e-4;
    // (log ratio, advantage, clipped?)
    let cases = [
        (hi + d, 1.0, true),
        (hi - d, 1.0, false),
        (lo - d, -1.0, true),
        (lo + d, -1.0, false),
        (lo - 0.3, 1.0, false), // A > 0 below the lower bound: the unclipped branch is the smaller one
        (hi + 0.3, -1.0, false), // A < 0 above the upper bound, below c
        (c + d, -1.0, true),    // dual clip
        (c - d, -1.0, false),
        (c + d, 1.0, true), // A > 0: the dual clip does not apply, the PPO clip does
        (0.5, 0.0, false),  // zero advantage: zero loss and gradient
    ];
    let n = cases.len();
    let actions: Vec<Action> =
        (0..n).map(|i| Action { offset: i, len: 1, agent: 0, reward: 0.0, truncated: false, group: 0 }).collect();
    let old = vec![0.0f32; n];
    let logp: Vec<f32> = cases.iter().map(|c| c.0 as f32).collect();
    let adv: Vec<f32> = cases.iter().map(|c| c.1 as f32).collect();
    let cfg = PgLossConfig { dual_clip: Some(2.0), aggregation: Aggregation::TokenMean, ..Default::default() };
    let got = pg_loss(&logp, &old, &old, &adv, &vec![true; n], &actions, &cfg).unwrap();
    for (i, &(x, a, clipped)) in cases.iter().enumerate() {
        let want = if clipped { 0.0 } else { -(x as f32 as f64).exp() * a / n as f64 };
        assert_close(got.dlogp[i] as f64, want, 1e-6, &format!("case {i}"));
        if clipped {
            assert_eq!(got.dlogp[i], 0.0, "case {i}");
        }
    }
    assert_close(got.clip_frac as f64, 4.0 / n as f64, 1e-7, "clip_frac");
}

#[test]
fn empty_mask_gives_zero_loss() {
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let b = random_batch(&mut rng, 2);
    let t = b.logp_old.len();
    for aggregation in AGGREGATIONS {
        let cfg = PgLossConfig { aggregation, kl_loss_coef: Some(0.1), ..Default::default() };
        let got =
            pg_loss(&b.logp_ref, &b.logp_old, &b.logp_ref, &vec![1.0; t], &vec![false; t], &b.actions, &cfg).unwrap();
        assert_eq!((got.loss, got.clip_frac, got.approx_kl, got.tokens), (0.0, 0.0, 0.0, 0));
        assert!(got.dlogp.iter().all(|&g| g == 0.0));
    }
}

/// One batch for GRPO and RLOO, one token per action except `a3` (positions 3..5, d = [0.2, -0.4] against
/// the reference; every other token has d = 0). Listed out of position order on purpose.
///
/// | action | pos | agent | group | reward |
/// |---|---|---|---|---|
/// | a0 | 0 | 0 | 0 | 1.0 |
/// | a1 | 1 | 0 | 0 | 0.5 |
/// | a2 | 2 | 0 | 0 | 0.0 |
/// | a3 | 3..5 | 0 | 1 | 0.8 |
/// | a4 | 5 | 0 | 1 | 0.2 |
/// | a5 | 6 | 0 | 2 | 0.9 (alone) |
/// | a6 | 7 | 1 | 0 | 5.0 (alone: agent 1's group 0 is not agent 0's) |
/// | a7 | 8 | 0 | 0 | 10.0, truncated (masked: in no statistic) |
fn grouped() -> (Vec<f32>, Vec<f32>, Vec<Action>) {
    let act = |offset, len, agent, group, reward, truncated| Action { offset, len, agent, reward, truncated, group };
    let actions = vec![
        act(5, 1, 0, 1, 0.2, false),
        act(0, 1, 0, 0, 1.0, false),
        act(7, 1, 1, 0, 5.0, false),
        act(2, 1, 0, 0, 0.0, false),
        act(6, 1, 0, 2, 0.9, false),
        act(3, 2, 0, 1, 0.8, false),
        act(8, 1, 0, 0, 10.0, true),
        act(1, 1, 0, 0, 0.5, false),
    ];
    let logp_old = vec![-1.0; 9];
    let mut logp_ref = logp_old.clone();
    (logp_ref[3], logp_ref[4]) = (-1.2, -0.6);
    (logp_old, logp_ref, actions)
}

fn check_grouped(estimator: Estimator, adv: [f64; 9], returns: [f64; 9]) {
    let (logp_old, logp_ref, actions) = grouped();
    let cfg = AdvantageConfig { beta: 0.5, estimator, ..Default::default() };
    let got = compute_advantages(&logp_old, &logp_ref, &actions, 2, &cfg).unwrap();
    for i in 0..9 {
        assert_close(got.adv[i] as f64, adv[i], 1e-6, &format!("{estimator:?} advantage at {i}"));
        assert_close(got.returns[i] as f64, returns[i], 1e-6, &format!("{estimator:?} return at {i}"));
    }
    assert_eq!(got.mask, [true, true, true, true, true, true, true, true, false]);
    // The raw coach reward of the valid actions, whatever the estimator: (1 + 0.5 + 0 + 0.8 + 0.2 + 0.9) / 6.
    assert_close(got.per_agent[0].mean_reward as f64, 3.4 / 6.0, 1e-6, "mean_reward");
    // normalize_std is REINFORCE++'s: GRPO and RLOO do not whiten.
    let unnormalised = AdvantageConfig { normalize_std: false, ..cfg };
    assert_eq!(compute_advantages(&logp_old, &logp_ref, &actions, 2, &unnormalised).unwrap().adv, got.adv);
}

#[test]
fn grpo_hand_computed() {
    // s = (r - mean) / (sample std + 1e-9) within each (agent, group), valid actions only:
    //   agent 0 group 0: r = [1, 0.5, 0] -> mean 0.5, sum of squares 0.5, std sqrt(0.5 / 2) = 0.5 -> [1, 0, -1]
    //   agent 0 group 1: r = [0.8, 0.2] -> mean 0.5, std sqrt(0.18 / 1) = 0.4242641 -> +-0.3 / 0.4242641
    //                    = +-0.7071068 (= 1 / sqrt(2))
    //   a5, a6: groups of one -> 0. a7 (masked): (10 - 0.5) / 0.5 = 19 as its return, advantage 0.
    // KL kept per token (beta 0.5, k1): a3's r_t = [-0.1, 0.2 + 0.7071068] -> G = [0.8071068, 0.9071068].
    // No whitening: A = G.
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let a = [1.0, 0.0, -1.0, 0.1 + h, 0.2 + h, -h, 0.0, 0.0, 0.0];
    let g = [1.0, 0.0, -1.0, 0.1 + h, 0.2 + h, -h, 0.0, 0.0, 19.0];
    check_grouped(Estimator::Grpo, a, g);
}

#[test]
fn rloo_hand_computed() {
    // s = r - mean of the rest of its (agent, group), valid actions only:
    //   agent 0 group 0: 1 - (0.5 + 0) / 2 = 0.75, 0.5 - (1 + 0) / 2 = 0, 0 - (1 + 0.5) / 2 = -0.75
    //   agent 0 group 1: 0.8 - 0.2 = 0.6, 0.2 - 0.8 = -0.6
    //   a5, a6: groups of one -> 0. a7 (masked): 10 - (1 + 0.5 + 0) / 3 = 9.5 as its return, advantage 0.
    // KL kept per token (beta 0.5, k1): a3's r_t = [-0.1, 0.2 + 0.6] -> G = [0.7, 0.8]. No whitening: A = G.
    let a = [0.75, 0.0, -0.75, 0.7, 0.8, -0.6, 0.0, 0.0, 0.0];
    let g = [0.75, 0.0, -0.75, 0.7, 0.8, -0.6, 0.0, 0.0, 9.5];
    check_grouped(Estimator::Rloo, a, g);
}

#[test]
fn groups_of_one_leave_only_the_kl_penalty() {
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let mut b = random_batch(&mut rng, 2);
    for (k, a) in b.actions.iter_mut().enumerate() {
        a.group = k; // every action its own group (a trainer given no groups)
    }
    for estimator in [Estimator::Grpo, Estimator::Rloo] {
        let cfg = AdvantageConfig { beta: 0.3, kl: KlEstimator::K3, estimator, ..Default::default() };
        let got = compute_advantages(&b.logp_old, &b.logp_ref, &b.actions, 2, &cfg).unwrap();
        for a in &b.actions {
            for t in a.offset..a.offset + a.len {
                let kl: f64 = (t..a.offset + a.len).map(|k| naive_kl(cfg.kl, b.logp_old[k], b.logp_ref[k])).sum();
                let want = if got.mask[t] { -0.3 * kl } else { 0.0 };
                assert_close(got.adv[t] as f64, want, 1e-5, &format!("{estimator:?} at {t}"));
            }
        }
        // Without KL there is nothing left: every advantage is exactly 0.
        let no_kl = AdvantageConfig { beta: 0.0, ..cfg };
        let got = compute_advantages(&b.logp_old, &b.logp_ref, &b.actions, 2, &no_kl).unwrap();
        assert!(got.adv.iter().all(|&x| x == 0.0), "{estimator:?}");
    }
    // Equal rewards within one group: exactly 0 too (the epsilon never meets a zero difference).
    for a in &mut b.actions {
        (a.group, a.reward) = (0, 0.7);
    }
    for estimator in [Estimator::Grpo, Estimator::Rloo] {
        let cfg = AdvantageConfig { beta: 0.0, estimator, ..Default::default() };
        let got = compute_advantages(&b.logp_old, &b.logp_ref, &b.actions, 2, &cfg).unwrap();
        assert!(got.adv.iter().all(|&x| x == 0.0), "{estimator:?}");
    }
}

#[test]
fn reinforce_pp_ignores_groups() {
    let mut rng = ChaCha8Rng::seed_from_u64(43);
    let b = random_batch(&mut rng, 3);
    let cfg = AdvantageConfig::default();
    assert_eq!(cfg.estimator, Estimator::ReinforcePp, "REINFORCE++ is the default");
    let grouped = compute_advantages(&b.logp_old, &b.logp_ref, &b.actions, 3, &cfg).unwrap();
    let ungrouped: Vec<Action> = b.actions.iter().map(|a| Action { group: 0, ..*a }).collect();
    assert_eq!(grouped, compute_advantages(&b.logp_old, &b.logp_ref, &ungrouped, 3, &cfg).unwrap());
}
