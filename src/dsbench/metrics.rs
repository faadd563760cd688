//! The DSBench evaluation metrics, by the names the cleaned-prompts file uses, as pure functions of aligned
//! answer and prediction columns (the grader joins rows by id first and checks every cell's domain).
//!
//! Definitions follow scikit-learn and the Kaggle competitions the tasks come from:
//! - `accuracy`: the share of equal labels; `f1_micro` is the same number (micro-F1 of single-label
//!   classification counts every wrong label once as a false positive and once as a false negative).
//! - `f1`: binary F1 = 2TP / (2TP + FP + FN) of the positive class (the grader names it).
//! - `roc_auc`: the Mann-Whitney statistic with average ranks, so a tie between a positive and a negative
//!   counts one half; `normalized_gini` = 2 AUC - 1, Kaggle's normalised Gini for a binary target (Kaggle's
//!   code broke ties by row order; here they count one half).
//! - `log_loss`: -mean(ln p of the true class), each probability clipped to [1e-15, 1 - 1e-15] and each row
//!   then rescaled to sum 1 (scikit-learn, Kaggle); a binary task is the two-class case [1 - p, p].
//! - `rmse`, `mae`, `medae` (the median absolute error; for an even count the mean of the middle two),
//!   `rmsle` = rmse of ln(1 + x), `r2` = 1 - SS_res / SS_tot (a constant answer scores 1 when predicted
//!   exactly, else 0, as scikit-learn does), `smape` in percent with 0/0 = 0 (Kaggle's), `mcrmse` = rmse
//!   per target column, averaged.
//! - `pearson`, and `spearman` = Pearson of average ranks; 0 when either side is constant (the coefficient
//!   is undefined there, and a constant prediction carries no information).
//! - `quadratic_weighted_kappa` (alias `qwk`): Kaggle's quadratic weighted kappa over the integer ratings
//!   between the smallest and largest rating seen. Its weights (i - j)^2 / (N - 1)^2 scale numerator and
//!   denominator alike, so it equals 1 - sum (a - b)^2 / ((1/n) sum_r sum_s (a_r - b_s)^2), computed here in
//!   O(n) without the N x N matrix; 1 when both sides are one and the same constant.
//!
//! The functions take non-empty columns of equal length; the grader guarantees both.

/// A metric the grader supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Accuracy,
    F1,
    F1Micro,
    RocAuc,
    LogLoss,
    Rmse,
    Rmsle,
    Mae,
    Medae,
    R2,
    Smape,
    Mcrmse,
    Pearson,
    Spearman,
    Qwk,
    NormalizedGini,
}

/// How a metric treats several target columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    /// One target column only; several are unsupported.
    One,
    /// Scored column by column and averaged (the Kaggle tasks with several targets define it so:
    /// mean column-wise RMSLE, MCRMSE, mean AUC, mean Spearman).
    Mean,
    /// Several columns are the probabilities of the classes (multi-class log loss).
    Classes,
}

/// Every supported metric, in the order of the module docs.
pub const ALL: [Metric; 16] = [
    Metric::Accuracy,
    Metric::F1,
    Metric::F1Micro,
    Metric::RocAuc,
    Metric::NormalizedGini,
    Metric::LogLoss,
    Metric::Rmse,
    Metric::Mae,
    Metric::Medae,
    Metric::Rmsle,
    Metric::R2,
    Metric::Smape,
    Metric::Mcrmse,
    Metric::Pearson,
    Metric::Spearman,
    Metric::Qwk,
];

impl Metric {
    /// The metric of a cleaned-prompts `metric` name (case and surrounding spaces ignored).
    pub fn parse(name: &str) -> Option<Metric> {
        let name = name.trim().to_ascii_lowercase();
        if name == "qwk" {
            return Some(Metric::Qwk);
        }
        ALL.into_iter().find(|m| m.name() == name)
    }

    /// The canonical name, as in the cleaned-prompts file.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::F1Micro => "f1_micro",
            Metric::RocAuc => "roc_auc",
            Metric::LogLoss => "log_loss",
            Metric::Rmse => "rmse",
            Metric::Rmsle => "rmsle",
            Metric::Mae => "mae",
            Metric::Medae => "medae",
            Metric::R2 => "r2",
            Metric::Smape => "smape",
            Metric::Mcrmse => "mcrmse",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::Qwk => "quadratic_weighted_kappa",
            Metric::NormalizedGini => "normalized_gini",
        }
    }

    /// The name a task description gives it, in the cleaned prompts' wording.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Accuracy => "Accuracy",
            Metric::F1 => "F1 score",
            Metric::F1Micro => "Micro-averaged F1 score",
            Metric::RocAuc => "Area Under ROC Curve (AUC-ROC)",
            Metric::LogLoss => "Log Loss",
            Metric::Rmse => "Root Mean Squared Error (RMSE)",
            Metric::Rmsle => "Root Mean Squared Logarithmic Error (RMSLE)",
            Metric::Mae => "Mean Absolute Error (MAE)",
            Metric::Medae => "Median Absolute Error (MedAE)",
            Metric::R2 => "R-squared (R2)",
            Metric::Smape => "Symmetric Mean Absolute Percentage Error (SMAPE)",
            Metric::Mcrmse => "Mean Columnwise Root Mean Squared Error (MCRMSE)",
            Metric::Pearson => "Pearson correlation coefficient",
            Metric::Spearman => "Spearman rank correlation",
            Metric::Qwk => "Quadratic Weighted Kappa (QWK)",
            Metric::NormalizedGini => "Normalized Gini coefficient",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(
            self,
            Metric::LogLoss
                | Metric::Rmse
                | Metric::Rmsle
                | Metric::Mae
                | Metric::Medae
                | Metric::Smape
                | Metric::Mcrmse
        )
    }

    pub fn columns(self) -> Columns {
        match self {
            Metric::Accuracy | Metric::F1 | Metric::F1Micro | Metric::Qwk => Columns::One,
            Metric::LogLoss => Columns::Classes,
            _ => Columns::Mean,
        }
    }
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// The median (the mean of the middle two for an even count); NaN for an empty slice.
pub fn median(x: &[f64]) -> f64 {
    if x.is_empty() {
        return f64::NAN;
    }
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// 1-based ranks, tied values sharing the mean of the ranks they span.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && x[order[end]] == x[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end; their mean:
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

pub fn accuracy<T: PartialEq>(truth: &[T], pred: &[T]) -> f64 {
    truth.iter().zip(pred).filter(|(t, p)| t == p).count() as f64 / truth.len() as f64
}

/// Binary F1 of the positive class (`true`); 0 when no row is positive on either side (scikit-learn).
pub fn f1(truth: &[bool], pred: &[bool]) -> f64 {
    let count = |t: bool, p: bool| truth.iter().zip(pred).filter(|&(&a, &b)| a == t && b == p).count() as f64;
    let (tp, fp, fn_) = (count(true, true), count(false, true), count(true, false));
    let denominator = 2.0 * tp + fp + fn_;
    if denominator == 0.0 {
        0.0
    } else {
        2.0 * tp / denominator
    }
}

/// Area under the ROC curve of `score` for the positives `truth`; None unless both classes occur.
pub fn roc_auc(truth: &[bool], score: &[f64]) -> Option<f64> {
    let positives = truth.iter().filter(|&&t| t).count() as f64;
    let negatives = truth.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let rank_sum: f64 = average_ranks(score).iter().zip(truth).filter(|(_, &t)| t).map(|(r, _)| r).sum();
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// 2 AUC - 1; None unless both classes occur.
pub fn normalized_gini(truth: &[bool], score: &[f64]) -> Option<f64> {
    roc_auc(truth, score).map(|auc| 2.0 * auc - 1.0)
}

/// Probabilities are clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] before the logarithm.
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// Multi-class log loss: `truth[r]` is row r's class, `probs[r]` its predicted probabilities by class.
pub fn log_loss(truth: &[usize], probs: &[Vec<f64>]) -> f64 {
    let losses: Vec<f64> = truth
        .iter()
        .zip(probs)
        .map(|(&class, row)| {
            let clipped: Vec<f64> = row.iter().map(|p| p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)).collect();
            -(clipped[class] / clipped.iter().sum::<f64>()).ln()
        })
        .collect();
    mean(&losses)
}

pub fn rmse(truth: &[f64], pred: &[f64]) -> f64 {
    mean(&truth.iter().zip(pred).map(|(t, p)| (p - t).powi(2)).collect::<Vec<_>>()).sqrt()
}

/// RMSE of ln(1 + x); both sides must be >= 0 (the grader checks).
pub fn rmsle(truth: &[f64], pred: &[f64]) -> f64 {
    let log = |x: &[f64]| x.iter().map(|v| v.ln_1p()).collect::<Vec<_>>();
    rmse(&log(truth), &log(pred))
}

fn absolute_errors(truth: &[f64], pred: &[f64]) -> Vec<f64> {
    truth.iter().zip(pred).map(|(t, p)| (p - t).abs()).collect()
}

pub fn mae(truth: &[f64], pred: &[f64]) -> f64 {
    mean(&absolute_errors(truth, pred))
}

pub fn medae(truth: &[f64], pred: &[f64]) -> f64 {
    median(&absolute_errors(truth, pred))
}

pub fn r2(truth: &[f64], pred: &[f64]) -> f64 {
    let m = mean(truth);
    let ss_res: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum();
    let ss_tot: f64 = truth.iter().map(|t| (t - m).powi(2)).sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}

/// Symmetric MAPE in percent (0 to 200): mean of |p - t| / ((|t| + |p|) / 2), a 0/0 term counting 0.
pub fn smape(truth: &[f64], pred: &[f64]) -> f64 {
    let terms: Vec<f64> = truth
        .iter()
        .zip(pred)
        .map(|(t, p)| {
            let scale = (t.abs() + p.abs()) / 2.0;
            if scale == 0.0 {
                0.0
            } else {
                (p - t).abs() / scale
            }
        })
        .collect();
    100.0 * mean(&terms)
}

/// Pearson's r; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let sy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if sx == 0.0 || sy == 0.0 {
        return 0.0;
    }
    (cov / (sx * sy).sqrt()).clamp(-1.0, 1.0)
}

/// Spearman's rho: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Quadratic weighted kappa of integer ratings (module docs for the O(n) form).
pub fn qwk(truth: &[f64], pred: &[f64]) -> f64 {
    let n = truth.len() as f64;
    let (mt, mp) = (mean(truth), mean(pred));
    let observed: f64 = truth.iter().zip(pred).map(|(t, p)| (t - p).powi(2)).sum();
    // (1/n) sum_r sum_s (t_r - p_s)^2 = n (var t + var p + (mean t - mean p)^2), population variances.
    let var = |x: &[f64], m: f64| x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
    let expected = n * (var(truth, mt) + var(pred, mp) + (mt - mp).powi(2));
    if expected == 0.0 {
        return 1.0;
    }
    1.0 - observed / expected
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn names_round_trip() {
        for m in ALL {
            assert_eq!(Metric::parse(m.name()), Some(m));
        }
        assert_eq!(Metric::parse(" QWK "), Some(Metric::Qwk));
        assert_eq!(Metric::parse("map_at_3"), None);
        assert_eq!(Metric::parse("jaccard"), None);
        assert!(Metric::RocAuc.higher_is_better() && Metric::R2.higher_is_better());
        assert!(!Metric::Rmsle.higher_is_better() && !Metric::LogLoss.higher_is_better());
    }

    #[test]
    fn ranks_and_median() {
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0, 2.0]), [3.5, 1.0, 3.5, 2.0]);
        assert_eq!(average_ranks(&[5.0, 5.0, 5.0]), [2.0, 2.0, 2.0]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 10.0]), 3.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn classification_metrics() {
        assert_eq!(accuracy(&["a", "b", "c", "a"], &["a", "b", "a", "a"]), 0.75);
        // TP = 2 (rows 0, 4), FP = 1 (row 2), FN = 1 (row 1): 4 / (4 + 1 + 1).
        let t = [true, true, false, false, true];
        close(f1(&t, &[true, false, true, false, true]), 4.0 / 6.0);
        assert_eq!(f1(&[false, false], &[false, false]), 0.0);
        assert_eq!(f1(&[true, false], &[true, false]), 1.0);
    }

    #[test]
    fn auc_and_gini() {
        let truth = [false, true, false, true];
        // Pairs (positive, negative): 0.3 > 0.1, 0.3 < 0.35, 0.8 > both: 3 of 4.
        close(roc_auc(&truth, &[0.1, 0.3, 0.35, 0.8]).unwrap(), 0.75);
        // Kaggle's Gini by hand on the same rows: actual sorted by score descending is 1,0,1,0; cumulative
        // shares .5,.5,1,1 sum to 3, minus (n+1)/2 = 2.5 gives 0.5; the perfect order 1,1,0,0 gives 1: 0.5/1.
        close(normalized_gini(&truth, &[0.1, 0.3, 0.35, 0.8]).unwrap(), 0.5);
        // A positive tied with a negative at 0.5 counts one half: (0.5 + 1 + 2) / 4.
        close(roc_auc(&truth, &[0.5, 0.5, 0.2, 0.9]).unwrap(), 0.875);
        close(roc_auc(&truth, &[0.9, 0.1, 0.8, 0.2]).unwrap(), 0.0);
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
        assert_eq!(normalized_gini(&[false], &[0.1]), None);
    }

    #[test]
    fn log_loss_clips_and_normalises() {
        // -(ln 0.8 + ln 0.6) / 2.
        close(log_loss(&[1, 0], &[vec![0.2, 0.8], vec![0.6, 0.4]]), 0.3669845875401002);
        // A zero probability for the true class costs -ln(1e-15) = 34.5388 instead of infinity.
        close(log_loss(&[1, 1], &[vec![1.0, 0.0], vec![0.0, 1.0]]), 17.269388197455342);
        // Rows rescaled to sum 1 after clipping: [0.4, 0.2, 0.2] -> [0.5, 0.25, 0.25].
        close(log_loss(&[0], &[vec![0.4, 0.2, 0.2]]), std::f64::consts::LN_2);
        // Clipping comes first: [2, 1, 1] clips to about [1, 1, 1], so 1/3 each.
        close(log_loss(&[0], &[vec![2.0, 1.0, 1.0]]), 3f64.ln());
        // -(ln 0.7 + ln 0.6) / 2 over three classes.
        close(log_loss(&[0, 2], &[vec![0.7, 0.2, 0.1], vec![0.2, 0.2, 0.6]]), 0.4337502838523616);
    }

    #[test]
    fn regression_metrics() {
        close(rmse(&[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0]), 1.1547005383792515); // sqrt(4 / 3)
        close(rmsle(&[1.0, 0.0], &[2.0, 0.0]), 0.28670712747781973); // sqrt((ln 3 - ln 2)^2 / 2)
        close(mae(&[1.0, 2.0, 3.0, 4.0], &[2.0, 2.0, 1.0, 4.0]), 0.75); // (1 + 0 + 2 + 0) / 4
        close(medae(&[1.0, 2.0, 3.0, 4.0], &[2.0, 2.0, 1.0, 4.0]), 0.5); // errors 0,0,1,2
        close(medae(&[0.0, 0.0, 0.0], &[3.0, -1.0, 2.0]), 2.0);
        close(r2(&[1.0, 2.0, 3.0], &[1.0, 2.0, 2.0]), 0.5); // 1 - 1/2
        assert_eq!(r2(&[2.0, 2.0], &[2.0, 2.0]), 1.0);
        assert_eq!(r2(&[2.0, 2.0], &[2.0, 3.0]), 0.0);
        // Terms 10/105, 0 (0/0), 50/25 = 2; times 100 / 3.
        close(smape(&[100.0, 0.0, 50.0], &[110.0, 0.0, 0.0]), 69.84126984126985);
    }

    #[test]
    fn correlations() {
        // x deviations -1,0,1; y = 2,4,7 deviations -7/3,-1/3,8/3: cov 5, r = 5 / sqrt(2 * 114/9).
        close(pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 7.0]), 0.9933992677987828);
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), 0.0);
        // Ranks 1,3,2,4 against 1,2,3,4: 1 - 6 * 2 / (4 * 15).
        close(spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 30.0, 20.0, 40.0]), 0.8);
        // Ranks 1,2.5,2.5,4 against 1,2,3,4: 4.5 / sqrt(4.5 * 5).
        close(spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]), 0.9486832980505138);
    }

    #[test]
    fn quadratic_weighted_kappa() {
        // Ratings 1..3, weights (i-j)^2/4. Observed pairs (1,1),(2,2),(3,2): sum w O = 1/4. Histograms
        // [1,1,1] and [1,2,0], E = outer / 3: sum w E = 1/6 + 1/12 + 1/2 = 3/4. Kappa 1 - (1/4)/(3/4).
        close(qwk(&[1.0, 2.0, 3.0], &[1.0, 2.0, 2.0]), 2.0 / 3.0);
        assert_eq!(qwk(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
        assert_eq!(qwk(&[4.0, 4.0], &[4.0, 4.0]), 1.0);
        // A constant prediction agrees no better than chance: observed 2, expected (3 * 2) / 3.
        close(qwk(&[1.0, 2.0, 3.0], &[2.0, 2.0, 2.0]), 0.0);
        // Reversed ratings: observed 4 + 0 + 4 = 8; sum_r sum_s (a_r - b_s)^2 = 12 over the 3 x 3 pairs, / 3 = 4.
        close(qwk(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
    }
}
