//! The fuzz suite: every reader of a file a user hands ttlora, fed mutated copies of real
//! inputs, must give a value or an error — never a panic, an abort, or an allocation past the
//! cap `main.rs` puts on this test binary.
//!
//! Mutations are structure-aware where the input has structure: JSON files (configs,
//! `tokenizer.json`, safetensors headers) get values replaced at random paths by hostile ones
//! (huge, negative, fractional, non-finite as f32, wrong types) or removed; every file also
//! gets byte-level edits (flips, overwrites, truncation, insertion, duplication).
//!
//! `cargo test` runs [`CASES`] cases per target (seeded, the same on every run); set
//! `TTLORA_FUZZ_CASES=N` for a long run. A crasher that is found is kept as a regression
//! fixture under `tests/fixtures/fuzz/<target>/` (the mutated file with the name the target
//! reads), which [`crashers_stay_fixed`] replays on every run.

use std::path::{Path, PathBuf};

use candle_core::Device;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use ttlora::data::{CustomColumns, CustomLabels, Example, TextEncoder};
use ttlora::models::{BertConfig, Pooling};

use crate::common::{TempDir, peft_fixture, tiny_bert_folder, tiny_deberta_folder};

/// Cases per target in `cargo test`.
const CASES: u32 = 48;

fn cases() -> u32 {
    std::env::var("TTLORA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---- mutations --------------------------------------------------------------------------------

/// A byte-level edit; positions are fractions of the input's length (in 1/65536), so an edit
/// stays meaningful as earlier edits change the length.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip { at: u16, bit: u8 },
    Set { at: u16, value: u8 },
    Truncate { at: u16 },
    Insert { at: u16, bytes: Vec<u8> },
    Duplicate { from: u16, len: u16, to: u16 },
}

fn pos(at: u16, len: usize) -> usize {
    (at as usize * len) >> 16
}

impl ByteEdit {
    fn apply(&self, data: &mut Vec<u8>) {
        let n = data.len();
        match self {
            Self::Flip { at, bit } if n > 0 => data[pos(*at, n)] ^= 1 << (bit % 8),
            Self::Set { at, value } if n > 0 => data[pos(*at, n)] = *value,
            Self::Truncate { at } => data.truncate(pos(*at, n)),
            Self::Insert { at, bytes } => {
                let at = pos(*at, n);
                data.splice(at..at, bytes.iter().copied());
            }
            Self::Duplicate { from, len, to } if n > 0 => {
                let from = pos(*from, n);
                let end = (from + *len as usize % 256).min(n);
                let chunk = data[from..end].to_vec();
                let to = pos(*to, n);
                data.splice(to..to, chunk);
            }
            _ => {}
        }
    }
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(at, bit)| ByteEdit::Flip { at, bit }),
        (any::<u16>(), any::<u8>()).prop_map(|(at, value)| ByteEdit::Set { at, value }),
        any::<u16>().prop_map(|at| ByteEdit::Truncate { at }),
        (any::<u16>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        (any::<u16>(), any::<u16>(), any::<u16>())
            .prop_map(|(from, len, to)| ByteEdit::Duplicate { from, len, to }),
    ]
}

/// Values no field should crash on.
fn hostile_value(i: u8) -> Value {
    use serde_json::json;
    match i % 24 {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1),
        3 => json!(2_147_483_648u64),
        4 => json!(4_294_967_296u64),
        5 => json!(1_099_511_627_776u64),
        6 => json!(9_223_372_036_854_775_808u64),
        7 => json!(u64::MAX),
        8 => json!(-9_223_372_036_854_775_807i64),
        9 => json!(1e39),
        10 => json!(-1e39),
        11 => json!(1e-45),
        12 => json!(0.5),
        13 => json!(1e300),
        14 => json!(""),
        15 => json!("x"),
        16 => Value::Null,
        17 => json!(true),
        18 => json!([]),
        19 => json!({}),
        20 => json!([1, 2, 3]),
        21 => json!([0, 1_099_511_627_776u64]),
        22 => json!("a".repeat(10_000)),
        _ => json!(65_536),
    }
}

/// A JSON edit: replace (or remove) the value at one of the document's paths, chosen by
/// `pick` modulo their number.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace { pick: u32, value: u8 },
    Remove { pick: u32 },
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        4 => (any::<u32>(), any::<u8>()).prop_map(|(pick, value)| JsonEdit::Replace { pick, value }),
        1 => any::<u32>().prop_map(|pick| JsonEdit::Remove { pick }),
    ]
}

/// Every JSON pointer in `v` below the root.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

impl JsonEdit {
    fn apply(&self, doc: &mut Value) {
        let mut all = Vec::new();
        pointers(doc, String::new(), &mut all);
        if all.is_empty() {
            return;
        }
        let pick = match self {
            Self::Replace { pick, .. } | Self::Remove { pick } => *pick as usize % all.len(),
        };
        let target = &all[pick];
        match self {
            Self::Replace { value, .. } => {
                if let Some(slot) = doc.pointer_mut(target) {
                    *slot = hostile_value(*value);
                }
            }
            Self::Remove { .. } => {
                let (parent, key) = target.rsplit_once('/').unwrap_or(("", target));
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>()
                            && i < items.len()
                        {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The mutations of one case: JSON edits (applied when the file is JSON) then byte edits.
#[derive(Debug, Clone)]
struct Mutation {
    json: Vec<JsonEdit>,
    bytes: Vec<ByteEdit>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec(json_edit(), 0..4),
        prop::collection::vec(byte_edit(), 0..3),
    )
        .prop_map(|(json, bytes)| Mutation { json, bytes })
        .prop_filter("at least one edit", |m| {
            !m.json.is_empty() || !m.bytes.is_empty()
        })
}

impl Mutation {
    /// `seed` mutated: JSON edits on a JSON document, then byte edits.
    fn apply(&self, seed: &[u8]) -> Vec<u8> {
        let mut data = match serde_json::from_slice::<Value>(seed) {
            Ok(mut doc) if !self.json.is_empty() => {
                for e in &self.json {
                    e.apply(&mut doc);
                }
                serde_json::to_vec(&doc).unwrap()
            }
            _ => seed.to_vec(),
        };
        for e in &self.bytes {
            e.apply(&mut data);
        }
        data
    }

    /// A safetensors file mutated: JSON edits on its header (the length prefix kept
    /// consistent), then byte edits on the whole file.
    fn apply_safetensors(&self, seed: &[u8]) -> Vec<u8> {
        let mut data = seed.to_vec();
        if !self.json.is_empty() && seed.len() >= 8 {
            let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
            if let Some(Ok(mut header)) = seed.get(8..8 + n).map(serde_json::from_slice::<Value>) {
                for e in &self.json {
                    e.apply(&mut header);
                }
                let text = serde_json::to_vec(&header).unwrap();
                data = (text.len() as u64).to_le_bytes().to_vec();
                data.extend(text);
                data.extend(&seed[8 + n..]);
            }
        }
        for e in &self.bytes {
            e.apply(&mut data);
        }
        data
    }
}

/// Runs `target` on `cases()` mutations; a panic fails the test with the mutation that
/// caused it (proptest shrinks it first).
fn fuzz(name: &str, target: impl Fn(&Mutation)) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed_bytes(name),
        ),
    );
    runner
        .run(&mutation(), |m| {
            target(&m);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("fuzz target `{name}`: {e}"));
}

/// A fixed 32-byte seed per target name, so each target explores its own sequence.
fn seed_bytes(name: &str) -> [u8; 32] {
    let mut seed = [7u8; 32];
    for (i, b) in name.bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_mul(31).wrapping_add(i as u8);
    }
    seed
}

/// Copies the files of `from` into a fresh folder `name` in `tmp`.
fn copy_folder(from: &Path, tmp: &TempDir, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    dir
}

// ---- targets ------------------------------------------------------------------------------------

/// A value or an error, whatever the file: reading safetensors strictly, both ways.
fn read_weights(path: &Path) {
    let _ = ttlora::io::fs::read_safetensors(path, &Device::Cpu);
    if let Ok(src) = ttlora::io::SafetensorsSource::open_file(path) {
        use ttlora::io::TensorSource;
        let names: Vec<String> = src.names().into_iter().map(String::from).collect();
        for name in names {
            let shape = src.shape(&name).map(<[usize]>::to_vec).unwrap_or_default();
            let _ = src.load(&name, &shape, &Device::Cpu);
        }
    }
}

#[test]
fn safetensors_files() {
    let tmp = TempDir::new("fuzz-safetensors");
    let seed = std::fs::read(peft_fixture("lora").join("adapter_model.safetensors")).unwrap();
    let path = tmp.join("adapter_model.safetensors");
    fuzz("safetensors", |m| {
        std::fs::write(&path, m.apply_safetensors(&seed)).unwrap();
        read_weights(&path);
    });
}

/// Inspects `adapter`, loads it onto `base` and, when that works, runs it on two sentences.
fn load_and_run(adapter: &Path, base: &Path) {
    use ttlora::jobs::{inference, pipeline, task::encode_split};
    let _ = ttlora::jobs::inspect::inspect(adapter);
    let Ok(inf) = inference::load(adapter, Some(base.to_str().unwrap()), &Device::Cpu, false)
    else {
        return;
    };
    let Ok(encoder) = inf.encoder() else {
        return;
    };
    let texts = [("a fine film", None), ("awful .", Some("yes"))].map(|(a, b)| Example {
        text_a: a.into(),
        text_b: b.map(String::from),
        label: None,
    });
    if let Ok(split) = encode_split(&encoder, &texts, false) {
        let _ = pipeline::logits(
            inf.model.as_ref(),
            &split,
            2,
            encoder.pad_id(),
            &Device::Cpu,
        );
    }
}

/// Mutates `file` of each of `folders` and loads the folder onto `base`.
fn fuzz_adapter_file(name: &str, folders: &[PathBuf], base: &Path, file: &str) {
    let tmp = TempDir::new(&format!("fuzz-{name}"));
    let seeds: Vec<(PathBuf, Vec<u8>)> = folders
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let dir = copy_folder(f, &tmp, &format!("adapter-{i}"));
            let bytes = std::fs::read(dir.join(file)).unwrap();
            (dir, bytes)
        })
        .collect();
    let round = std::cell::Cell::new(0usize);
    fuzz(name, |m| {
        let (dir, seed) = &seeds[round.get() % seeds.len()];
        round.set(round.get() + 1);
        let path = dir.join(file);
        let mutated = if file.ends_with(".safetensors") {
            m.apply_safetensors(seed)
        } else {
            m.apply(seed)
        };
        std::fs::write(&path, mutated).unwrap();
        load_and_run(dir, base);
        std::fs::write(&path, seed).unwrap();
    });
}

/// ttlora's own adapter folders (every method), as the pre-redesign code wrote them.
fn own_folders() -> Vec<PathBuf> {
    let root = fixtures().join("old_folders/bert");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("adapter_config.json").is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn own_adapter_configs() {
    let base = tiny_bert_folder("fuzz-own-base", BertConfig::tiny());
    fuzz_adapter_file("own-config", &own_folders(), &base, "adapter_config.json");
}

#[test]
fn own_adapter_weights() {
    let base = tiny_bert_folder("fuzz-own-weights-base", BertConfig::tiny());
    fuzz_adapter_file(
        "own-weights",
        &own_folders(),
        &base,
        "adapter_model.safetensors",
    );
}

#[test]
fn peft_folders() {
    let base = peft_fixture("base");
    let folders: Vec<PathBuf> = ["lora", "dora", "prompt", "prefix"]
        .iter()
        .map(|n| peft_fixture(n))
        .collect();
    fuzz_adapter_file("peft-config", &folders, &base, "adapter_config.json");
    fuzz_adapter_file("peft-weights", &folders, &base, "adapter_model.safetensors");
}

#[test]
fn tokenizer_files() {
    let tmp = TempDir::new("fuzz-tokenizer");
    let seed = std::fs::read(fixtures().join("tokenizer-tiny.json")).unwrap();
    let path = tmp.join("tokenizer.json");
    let texts = [
        Example {
            text_a: "a fine film , and a long one".into(),
            text_b: Some("awful .".into()),
            label: None,
        },
        Example {
            text_a: "Café ☕ 12345 !!".into(),
            text_b: None,
            label: None,
        },
    ];
    fuzz("tokenizer", |m| {
        std::fs::write(&path, m.apply(&seed)).unwrap();
        if let Ok(enc) = TextEncoder::from_file(&path, 16) {
            let _ = enc.encode_batch(&texts);
            let _ = enc.encode(&texts[1]);
        }
    });
}

/// Mutates the `config.json` of the tiny model folder `base` and loads and runs it.
fn fuzz_model_config(name: &str, base: &Path) {
    let path = base.join("config.json");
    let seed = std::fs::read(&path).unwrap();
    let input = crate::common::two_sequences(0, &Device::Cpu);
    fuzz(name, |m| {
        std::fs::write(&path, m.apply(&seed)).unwrap();
        if let Ok(model) = ttlora::models::load_classifier(base, 2, Pooling::Cls, &Device::Cpu, 0) {
            let _ = model.forward(&input, false);
        }
    });
    std::fs::write(&path, seed).unwrap();
}

#[test]
fn model_configs() {
    fuzz_model_config(
        "bert-config",
        &tiny_bert_folder("fuzz-bert", BertConfig::tiny()),
    );
    fuzz_model_config("deberta-config", &tiny_deberta_folder("fuzz-deberta"));
}

/// A data-file reader under test.
type Reader = Box<dyn Fn(&Path)>;

#[test]
fn data_files() {
    let tmp = TempDir::new("fuzz-data");
    let glue = fixtures().join("glue");
    let sst2 = ttlora::data::task("sst2").unwrap();
    let mrpc = ttlora::data::task("mrpc").unwrap();
    let cb = ttlora::data::task("cb").unwrap();
    let targets: Vec<(PathBuf, Reader)> = vec![
        (
            glue.join("SST-2/dev.tsv"),
            Box::new(move |p| {
                let _ = ttlora::data::read_file(sst2, p);
            }),
        ),
        (
            glue.join("MRPC/dev.tsv"),
            Box::new(move |p| {
                let _ = ttlora::data::read_file(mrpc, p);
            }),
        ),
        (
            fixtures().join("superglue/CB/val.jsonl"),
            Box::new(move |p| {
                let _ = ttlora::data::read_file(cb, p);
            }),
        ),
        (
            fixtures().join("custom/reviews.csv"),
            Box::new(|p| {
                let cols = CustomColumns {
                    text: "review".into(),
                    text_pair: None,
                    label: "sentiment".into(),
                };
                let _ = ttlora::data::read_custom(p, &cols, &CustomLabels::Infer);
            }),
        ),
        (
            fixtures().join("custom/scores.jsonl"),
            Box::new(|p| {
                let cols = CustomColumns {
                    text: "sentence1".into(),
                    text_pair: Some("sentence2".into()),
                    label: "score".into(),
                };
                let _ = ttlora::data::read_custom(p, &cols, &CustomLabels::Score);
                let _ = ttlora::data::read_texts(p, "sentence1", Some("sentence2"));
            }),
        ),
    ];
    let mut targets = targets;
    // The decoder's prompted readers: every SuperGLUE task, labelled and not, and a custom
    // template's rows.
    for &task in ttlora::data::PromptedTask::ALL {
        targets.push((
            fixtures()
                .join("superglue")
                .join(task.folder())
                .join("val.jsonl"),
            Box::new(move |p| {
                let _ = ttlora::data::read_prompted(task, p);
                let _ = ttlora::data::read_prompted_unlabeled(task, p);
            }),
        ));
    }
    let template = ttlora::data::CustomTemplate::new(
        "{premise}\nQuestion: {hypothesis}? Yes or No?\n",
        vec!["Yes".into(), "No".into()],
        "label",
        Some(vec!["entailment".into(), "not_entailment".into()]),
    )
    .unwrap();
    targets.push((
        fixtures().join("superglue/RTE/val.jsonl"),
        Box::new(move |p| {
            let _ = ttlora::data::read_custom_prompted(&template, p);
            let _ = ttlora::data::read_custom_prompted_unlabeled(&template, p);
        }),
    ));
    for (i, (seed_path, read)) in targets.iter().enumerate() {
        let seed = std::fs::read(seed_path).unwrap();
        let path = tmp.join(seed_path.file_name().unwrap());
        fuzz(&format!("data-{i}"), |m| {
            std::fs::write(&path, m.apply(&seed)).unwrap();
            read(&path);
        });
    }
}

/// Every crasher the suite ever found, kept under `tests/fixtures/fuzz/<target>/`, still
/// gives a value or an error.
#[test]
fn crashers_stay_fixed() {
    let root = fixtures().join("fuzz");
    let base = tiny_bert_folder("fuzz-crashers", BertConfig::tiny());
    let deberta = tiny_deberta_folder("fuzz-crashers-deberta");
    let deberta_config: Value =
        serde_json::from_str(&std::fs::read_to_string(deberta.join("config.json")).unwrap())
            .unwrap();
    let mut replayed = 0;
    for target in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for case in std::fs::read_dir(target.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = case.path();
            match target.file_name().to_str() {
                Some("safetensors") => read_weights(&path),
                Some("own-adapter") => load_and_run(&path, &base),
                Some("tokenizer") => {
                    let _ = TextEncoder::from_file(&path, 16);
                }
                // A patch laid over the tiny DeBERTa's config.json.
                Some("deberta-config") => {
                    let patch: Value =
                        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                    let mut cfg = deberta_config.clone();
                    for (k, v) in patch.as_object().unwrap() {
                        cfg[k] = v.clone();
                    }
                    std::fs::write(deberta.join("config.json"), cfg.to_string()).unwrap();
                    let input = crate::common::two_sequences(0, &Device::Cpu);
                    if let Ok(model) =
                        ttlora::models::load_classifier(&deberta, 2, Pooling::Cls, &Device::Cpu, 0)
                    {
                        let _ = model.forward(&input, false);
                    }
                }
                other => panic!("{}: unknown fuzz target {other:?}", path.display()),
            }
            replayed += 1;
        }
    }
    // The kept crashers (see tests/fixtures/fuzz/README.md).
    assert!(
        replayed >= 3,
        "crasher fixtures missing under {}",
        root.display()
    );
}
