//! A task file (JSON Lines) through `mappa::data::parse_tasks` with the MathChat preset's field names, then
//! the train/holdout split and the per-step sampler over what it loaded.
use mappa::data::{parse_tasks, train_split, TaskSampler};
use mappa::run_config::{DataConfig, RunConfig};
use std::sync::OnceLock;

fn main() {
    static CFG: OnceLock<DataConfig> = OnceLock::new();
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let cfg = CFG.get_or_init(|| {
            let mut cfg = RunConfig::preset("mathchat").expect("the mathchat preset").data;
            cfg.id_field = "meta.id".into(); // a dotted path, as DSBench's files use
            cfg.answer_fields = vec!["answer".into(), "solution.value".into()];
            cfg.holdout_fraction = 0.25;
            cfg.train_sample = Some(2);
            cfg
        });
        let Some(tasks) = mappa_fuzz::ok("tasks", parse_tasks(text, "fuzz.jsonl", cfg)) else { return };
        let n = tasks.len();
        let Some(split) = mappa_fuzz::ok("split", train_split(tasks, cfg, 7)) else { return };
        assert_eq!(split.train.len() + split.holdout.len(), n, "the split lost or invented tasks");
        if let Ok(sampler) = TaskSampler::new(split.train.len(), 3, 7) {
            for step in 0..3 {
                assert!(sampler.step(step).iter().all(|&i| i < split.train.len()), "sampled index out of range");
            }
        }
    });
}
