use super::*;

#[test]
fn freezing_embeddings_keeps_only_the_embedding_module() {
    let cfg = FullConfig {
        freeze_embeddings: true,
    };
    assert!(!cfg.trains("bert.embeddings.word_embeddings.weight"));
    assert!(!cfg.trains("deberta.embeddings.LayerNorm.weight"));
    assert!(!cfg.trains("embeddings.position_embeddings.weight"));
    // DeBERTa's relative-position table is part of the encoder, not the embedding module.
    assert!(cfg.trains("deberta.encoder.rel_embeddings.weight"));
    assert!(cfg.trains("bert.encoder.layer.0.attention.self.query.weight"));
    assert!(FullConfig::default().trains("bert.embeddings.word_embeddings.weight"));
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
