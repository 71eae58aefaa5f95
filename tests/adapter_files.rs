//! Hostile adapter folders: each one a clear `ttlora: …` error line, no panic, and no output
//! folder left behind. They start from the PEFT-written fixture and break one thing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::common::{TempDir, assert_clear_error, peft_fixture as fixture, stdout, ttlora};

/// A copy of the fixture's LoRA folder: `lora` in `tmp`.
pub(crate) fn lora_copy(tmp: &TempDir) -> PathBuf {
    let dir = tmp.join("lora");
    std::fs::create_dir(&dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("lora").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// A ttlora-format (TT-LoRA) folder made from the fixture by `ttlora compress`: `own` in
/// `tmp`.
pub(crate) fn own_copy(tmp: &TempDir) -> PathBuf {
    let dir = lora_copy(tmp);
    let own = tmp.join("own");
    let base = fixture("base");
    let o = ttlora(&[
        "compress",
        "--adapter",
        dir.to_str().unwrap(),
        "--model",
        base.to_str().unwrap(),
        "--out",
        own.to_str().unwrap(),
        "--offline",
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    own
}

/// `ttlora export` of `adapter` must fail with `needles` in its error line and write nothing
/// (its would-be output is a sibling of `adapter`, inside the test's temp dir).
pub(crate) fn export_fails(adapter: &Path, needles: &[&str]) {
    let out = adapter.with_extension("out");
    let base = fixture("base");
    let o = ttlora(&[
        "export",
        "--adapter",
        adapter.to_str().unwrap(),
        "--model",
        base.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--offline",
    ]);
    assert_clear_error(&o, needles);
    assert!(!out.exists(), "a failed export left {}", out.display());
}

pub(crate) fn weights(dir: &Path) -> PathBuf {
    dir.join("adapter_model.safetensors")
}

/// Rewrites the safetensors JSON header of `dir`'s weights through `edit`, keeping its length
/// field consistent, and writes the result back.
fn edit_header(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(weights(dir)).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(weights(dir), out).unwrap();
}

/// Rewrites `dir`'s weights as a valid file holding what `edit` makes of its tensors.
pub(crate) fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let mut tensors = candle_core::safetensors::load(weights(dir), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, weights(dir)).unwrap();
}

pub(crate) const A0: &str =
    "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight";

#[test]
fn a_truncated_weights_file() {
    let tmp = TempDir::new("hostile-truncated");
    let dir = lora_copy(&tmp);
    let bytes = std::fs::read(weights(&dir)).unwrap();
    std::fs::write(weights(&dir), &bytes[..bytes.len() - 100]).unwrap();
    export_fails(
        &dir,
        &["adapter_model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn a_header_that_lies_about_offsets() {
    let tmp = TempDir::new("hostile-offsets");
    let dir = lora_copy(&tmp);
    edit_header(&dir, |h| {
        h[A0]["data_offsets"] = serde_json::json!([0, 1_000_000]);
    });
    export_fails(
        &dir,
        &["adapter_model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn a_header_that_lies_about_a_shape() {
    let tmp = TempDir::new("hostile-shape-size");
    let dir = lora_copy(&tmp);
    // 4×32 f32 values stored, 4×64 claimed.
    edit_header(&dir, |h| h[A0]["shape"] = serde_json::json!([4, 64]));
    export_fails(
        &dir,
        &["adapter_model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn a_tensor_whose_shape_does_not_fit_the_model() {
    let tmp = TempDir::new("hostile-misfit");
    let dir = lora_copy(&tmp);
    // A valid file, but lora_A has 16 inputs where the layer has 32.
    edit_tensors(&dir, |t| {
        let narrow = t[A0].narrow(1, 0, 16).unwrap().contiguous().unwrap();
        t.insert(A0.to_string(), narrow);
    });
    export_fails(&dir, &[A0, "[4, 16]", "expected [4, 32]"]);
}

#[test]
fn a_config_that_names_a_module_the_model_lacks() {
    // ttlora's own folder naming layer 9 of a 2-layer model.
    let tmp = TempDir::new("hostile-missing-module");
    let own = own_copy(&tmp);
    let cfg_path = own.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace(
            "layer.1.attention.self.value",
            "layer.9.attention.self.value",
        ),
    )
    .unwrap();
    export_fails(
        &own,
        &[
            "layer.9.attention.self.value",
            "not a linear layer of this model",
        ],
    );
}

#[test]
fn a_ttlora_config_whose_factors_do_not_multiply_out() {
    let tmp = TempDir::new("hostile-factors");
    let own = own_copy(&tmp);
    let cfg_path = own.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let module = "bert.encoder.layer.0.attention.self.query";
    cfg["modules"][module]["in_factors"] = serde_json::json!([8, 2, 3]);
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    export_fails(&own, &[module, "32"]);
}

#[test]
fn a_peft_option_ttlora_does_not_implement() {
    let tmp = TempDir::new("hostile-fan-in-fan-out");
    let dir = lora_copy(&tmp);
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"fan_in_fan_out\": false", "\"fan_in_fan_out\": true"),
    )
    .unwrap();
    export_fails(&dir, &["fan_in_fan_out", "Conv1D"]);
}

#[test]
fn use_dora_without_its_magnitudes() {
    let tmp = TempDir::new("hostile-dora");
    let dir = lora_copy(&tmp);
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        text.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    export_fails(&dir, &["lora_magnitude_vector", "use_dora = true"]);
}

#[test]
fn an_a_without_its_b() {
    let tmp = TempDir::new("hostile-no-b");
    let dir = lora_copy(&tmp);
    edit_tensors(&dir, |t| {
        t.remove(&A0.replace("lora_A", "lora_B"));
    });
    export_fails(&dir, &[A0, "has no partner"]);
}

#[test]
fn inspect_reads_a_peft_folder_without_its_base_model() {
    let o = ttlora(&["inspect", fixture("lora").to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    // 4 modules × (4×32 + 32×4), the 3×32 classifier + 3 biases, LoRA r=8 on 32×32 = 512 each.
    assert!(
        out.contains(
            "1024 adapter + 99 head = 1123 (4 modules; LoRA r=8 on them: 2048, 2.0x more)"
        ),
        "{out}"
    );
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("bert.")).collect();
    assert_eq!(rows.len(), 4, "{out}");
    for row in rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        // path, "LoRA", "r=4", "α=8", out×in, params, LoRA r=8, rank, norm
        assert_eq!(cols[1..5], ["LoRA", "r=4", "α=8", "32×32"], "{row}");
        assert_eq!(cols[7], "4", "a rank-4 LoRA has a rank-4 ΔW: {row}");
    }
    let o = ttlora(&["inspect", "--json", fixture("lora").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["adapter_params"], 1024);
    assert_eq!(v["peft_type"], "LORA");
}
