//! DeBERTa-v2 family tests.
