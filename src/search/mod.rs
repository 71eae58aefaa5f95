//! The paper's search over shapes, ranks, α and learning rates, done as HyperBand promises:
//! a space file ([`space`]), samplers ([`sampler`]: grid, random, TPE), schedulers that stop
//! poor trials early ([`scheduler`]: ASHA, HyperBand), a journal several worker processes
//! share without a server and that survives kills ([`journal`]), the study's settings
//! ([`settings`]), the worker loop ([`worker`]), where a study stands ([`mod@status`]) and the
//! trade-off report with its plots ([`report`], [`plot`]).

pub mod confirm;
pub mod journal;
pub mod plot;
pub mod report;
pub mod sampler;
pub mod scheduler;
pub mod settings;
pub mod slurm;
pub mod space;
pub mod status;
pub mod worker;

pub use report::{Report, build as build_report, markdown as report_markdown};
pub use sampler::SamplerKind;
pub use scheduler::{Scheduler, SchedulerKind};
pub use settings::{Resource, SearchSettings};
pub use space::{Config, SearchSpace};
pub use status::{StudyStatus, status};
pub use worker::{WorkerOptions, WorkerSummary, local_workers_that_fit, run_worker};
