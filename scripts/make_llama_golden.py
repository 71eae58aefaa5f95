#!/usr/bin/env python3
"""Writes tests/fixtures/llama_golden/<family>/: a tiny random LLaMA (grouped-query
attention, separate LM head) and Qwen2 (q/k/v biases, tied embeddings) made with
transformers and saved as an HF folder (config.json + model.safetensors), the same weights
written to GGUF with the `gguf` package the way llama.cpp's converter lays them out (its
tensor names; q/k rows permuted for the `llama` architecture) in F32 and in Q8_0, and
transformers' logits on a padded batch: for the HF weights (`logits`) and for the Q8_0 file's
dequantized weights (`logits_q8_0`). ttlora must reproduce them from each file
(tests/models.rs). Needs torch, transformers and gguf.
usage: make_llama_golden.py"""
import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = Path(__file__).resolve().parent.parent / "tests/fixtures/llama_golden"
# Not the default 10000, so a reader that misses it fails the test.
THETA = 5000.0
IDS = [[5, 9, 13, 17, 21, 3, 40], [7, 8, 9, 10, 0, 0, 0]]
MASK = [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6, rope_theta=THETA, initializer_range=0.2,
              bos_token_id=1, eos_token_id=2)
LAYER = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}


def gguf_name(hf):
    if hf in TOP:
        return TOP[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER[module]}.{kind}"


def permute(w, heads):
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def logits(model):
    with torch.no_grad():
        out = model(torch.tensor(IDS), attention_mask=torch.tensor(MASK)).logits
    return [[row.tolist() for row, m in zip(seq, mask) if m] for seq, mask in zip(out, MASK)]


def write_gguf(path, arch, cfg, state, quant):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(THETA)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    dequantized = {}
    for hf, t in state.items():
        a = t.numpy().astype(np.float32)
        if arch == "llama" and ".self_attn.q_proj." in hf:
            a = permute(a, cfg.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in hf:
            a = permute(a, cfg.num_key_value_heads)
        name = gguf_name(hf)
        if quant and a.ndim == 2:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            back = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(a.shape)
        else:
            w.add_tensor(name, a)
            back = a
        if arch == "llama" and ".self_attn.q_proj." in hf:
            back = permute_back(back, cfg.num_attention_heads)
        elif arch == "llama" and ".self_attn.k_proj." in hf:
            back = permute_back(back, cfg.num_key_value_heads)
        dequantized[hf] = torch.from_numpy(np.ascontiguousarray(back))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dequantized


def permute_back(w, heads):
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    torch.manual_seed(0)
    for family, cls, cfg in [
        ("llama", LlamaForCausalLM, LlamaConfig(tie_word_embeddings=False, **COMMON)),
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(tie_word_embeddings=True, **COMMON)),
    ]:
        model = cls(cfg).eval()
        folder = OUT / family
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, safe_serialization=True)
        state = {k: v for k, v in model.state_dict().items()
                 if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
        write_gguf(folder / "model-f32.gguf", family, cfg, state, quant=False)
        deq = write_gguf(folder / "model-q8_0.gguf", family, cfg, state, quant=True)
        expected = {"ids": IDS, "mask": MASK, "logits": logits(model)}
        model.load_state_dict(deq, strict=False)
        expected["logits_q8_0"] = logits(model)
        (folder / "logits.json").write_text(json.dumps(expected) + "\n")
        print(family, sorted(p.name for p in folder.iterdir()))


if __name__ == "__main__":
    main()
