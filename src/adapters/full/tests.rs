use super::*;
use crate::adapters::BaseTensorInfo;

#[test]
fn freezing_embeddings_keeps_only_the_embedding_module() {
    let cfg = FullConfig {
        freeze_embeddings: true,
    };
    let tensor = |embedding_module| BaseTensorInfo {
        name: "t",
        embedding_module,
    };
    assert!(!cfg.trains(&tensor(true)));
    assert!(cfg.trains(&tensor(false)));
    assert!(FullConfig::default().trains(&tensor(true)));
    // Which tensors the models tag as the embedding module (DeBERTa's relative-position table
    // is part of the encoder) is tested with the models' walks and in the method matrix.
}

#[test]
fn unknown_fields_are_refused() {
    let err = Full
        .parse_config(&serde_json::json!({"freeze_embedding": true}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("freeze_embedding"), "{err}");
    assert!(Full.parse_config(&Full.default_config()).is_ok());
}
