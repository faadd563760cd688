//! DSBench data modelling offline: the task-definition formats MAPPA ships ([`info`]), a generator of
//! synthetic tasks in the real layout ([`synth`]), and the grader of an episode's `submission.csv`
//! ([`grade`], with the metrics in [`metrics`]).
//!
//! The real CSVs are not available here; the generator's tasks let the Data Engineer -> Modeler -> Analyst
//! pipeline run and be tested end to end, and the same task records, info file and grader work unchanged
//! when `data.files_root` points at the real data.
pub mod grade;
pub mod info;
pub mod metrics;
pub mod synth;

pub use grade::{grade_submission, Grade, ANSWER_FILE, SUBMISSION_FILE};
pub use info::{load_task_infos, TaskInfo, TaskRecord};
pub use synth::{write_tasks, TabularConfig, Written};
