//! Flags several commands share, declared once and flattened into each command's args.

use anyhow::Result;
use candle_core::Device;
use clap::Args;

/// `--device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArgs {
    /// The parsed device.
    pub fn device(&self) -> Result<Device> {
        Ok(ttlora::parse_device(&self.device)?)
    }
}

/// `--offline`.
#[derive(Debug, Args)]
pub struct OfflineArgs {
    /// Never download: fail if the model is not available locally.
    #[arg(long)]
    pub offline: bool,
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print the result as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A float flag: finite as f32 (NaN, infinities and values past f32's range are refused by
/// the parser, naming the flag).
pub fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v.abs() <= f64::from(f32::MAX) {
        Ok(v)
    } else {
        Err(format!("{s} is not a finite number"))
    }
}

/// A float flag that must be finite and at least 0.
pub fn non_negative_f64(s: &str) -> std::result::Result<f64, String> {
    let v = finite_f64(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} is negative; give a number >= 0"))
    }
}

/// A float flag that must be finite and above 0.
pub fn positive_f64(s: &str) -> std::result::Result<f64, String> {
    let v = finite_f64(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} is not above 0"))
    }
}

/// The head's pooling of a saved adapter, when it should not come from the folder.
#[derive(Debug, Clone, Args)]
pub struct PoolingArgs {
    /// Pool the head's input as cls, mean or last-token instead of what the adapter folder
    /// records. A folder from elsewhere (PEFT) without ttlora's task record is run as HF's
    /// …ForSequenceClassification ran it in training: the first token (cls).
    #[arg(long)]
    pub pooling: Option<ttlora::io::Pooling>,
}

/// Tells the user which pooling a loaded adapter runs with, when it is not the recorded one.
pub fn report_pooling(inf: &ttlora::jobs::inference::Inference) {
    use ttlora::jobs::inference::PoolingSource;
    if inf.pooling_from != PoolingSource::Recorded {
        eprintln!("pooling: {} ({})", inf.task.pooling, inf.pooling_from);
    }
}

/// `--objective`: how a decoder is trained or scored on prompted tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectiveArg {
    /// A decoder's candidate answers by mean log-probability (MeZO's and LoRETTA's set-up).
    LmScore,
    /// HF's sequence-classification head on a decoder (`score` on the last token; the
    /// TT-LoRA authors' set-up), one class per candidate answer.
    Classify,
}

/// The prompt of a custom LM-scoring task (`--task custom`).
#[derive(Debug, Clone, Args)]
pub struct TemplateArgs {
    /// A prompted task of your own (`--task custom`, JSON Lines rows): the prompt, with
    /// each row's fields as `{field}` (`{{`/`}}` for literal braces), e.g.
    /// '{premise}\nQuestion: {hypothesis}? Yes or No?\n'.
    #[arg(long, value_name = "TEXT")]
    pub template: Option<String>,
    /// LM scoring, custom task: a candidate continuation of the prompt; repeat it for each
    /// (e.g. --candidate Yes --candidate No).
    #[arg(long = "candidate", value_name = "TEXT")]
    pub candidates: Vec<String>,
    /// LM scoring, custom task: the value of the label column (--label-column; `label` for
    /// predict, which ignores labels it cannot map) meaning each candidate, in the
    /// candidates' order; repeat it (default: 0, 1, …).
    #[arg(long = "label-value", value_name = "VALUE")]
    pub label_values: Vec<String>,
}

impl TemplateArgs {
    /// Whether any of the flags was given.
    pub fn given(&self) -> bool {
        self.template.is_some() || !self.candidates.is_empty() || !self.label_values.is_empty()
    }

    /// The custom template, its label read from `label_column`.
    ///
    /// # Errors
    /// No --template; a template or candidate list the parser refuses.
    pub fn custom(&self, label_column: &str) -> Result<ttlora::data::CustomTemplate> {
        let Some(template) = &self.template else {
            anyhow::bail!("--task custom needs --template and --candidate");
        };
        let label_values = (!self.label_values.is_empty()).then(|| self.label_values.clone());
        Ok(ttlora::data::CustomTemplate::new(
            template,
            self.candidates.clone(),
            label_column,
            label_values,
        )?)
    }
}

/// The data roots to search: `--data` alone when given, else the defaults.
pub fn data_roots(given: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
    match given {
        Some(root) => vec![root.to_path_buf()],
        None => ttlora::data::default_data_roots(),
    }
}
