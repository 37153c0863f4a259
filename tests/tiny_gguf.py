#!/usr/bin/env python3
"""Write a tiny llama-architecture GGUF model with random weights, for tests.

It has a real (small) SentencePiece-style "llama" vocabulary in its metadata: the 256 byte
tokens <0x00>..<0xFF> (so any text tokenizes), <unk>/<s>/</s>, and a few hundred word
pieces. llama.cpp (llama-cpp-python's server, llama-server) loads it and answers
/v1/completions (random tokens) and /v1/embeddings (a vector of n_embd floats).

Needs the `gguf` package (pip install gguf; tested with 0.19.0) and numpy.

    python3 tiny_gguf.py model.gguf        # ~0.5 MB, a few ms
"""
import sys

import numpy as np
import gguf

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_LAYER = 2
N_CTX = 2048

_WORDS = ("the of and to in is was for on that with as by it at from he his an be this are or "
          "which not but had have they you were her she all one their there been has would when "
          "who will more no if out so said what up its about into than them can only other new "
          "some could time these two may then do first any my now such like our over man me even "
          "most made after also did many before must through back years where much your way well "
          "down should because each just those people how too little state good very make world "
          "still own see men work long get here between both life being under never day same "
          "another know while last might us great old year off come since against go came right "
          "used take three hello ok yes world model server test answer question").split()


def _vocab():
    tokens, scores, types = [], [], []

    def add(text, score, kind):
        tokens.append(text)
        scores.append(score)
        types.append(kind)

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    for b in range(256):
        add("<0x%02X>" % b, 0.0, gguf.TokenType.BYTE)
    # Pieces: single letters and digits (with and without the word-start mark), then
    # whole words; a higher score wins in SPM merges, so longer pieces score higher.
    seen = set(tokens)
    pieces = [c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"]
    pieces += ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["\u2581"]
    pieces += ["\u2581" + w for w in _WORDS] + list(_WORDS)
    for p in pieces:
        if p not in seen:
            seen.add(p)
            add(p, -1000.0 + 10.0 * len(p) - 0.001 * len(tokens), gguf.TokenType.NORMAL)
    return tokens, scores, types


def write_tiny_gguf(path, seed=0):
    """Write the model to path; returns the vocabulary size."""
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("botlxc-tiny-test")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # A chat template, so /v1/chat/completions formats messages without guessing.
    w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant: {% endif %}")

    def t(name, *shape):  # numpy shape is (rows, cols) = GGUF (ne1, ne0)
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    t("token_embd.weight", n_vocab, N_EMBD)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    t("output.weight", n_vocab, N_EMBD)
    for i in range(N_LAYER):
        p = "blk.%d." % i
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        t(p + "attn_q.weight", N_EMBD, N_EMBD)
        t(p + "attn_k.weight", N_EMBD * N_HEAD_KV // N_HEAD, N_EMBD)
        t(p + "attn_v.weight", N_EMBD * N_HEAD_KV // N_HEAD, N_EMBD)
        t(p + "attn_output.weight", N_EMBD, N_EMBD)
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        t(p + "ffn_gate.weight", N_FF, N_EMBD)
        t(p + "ffn_up.weight", N_FF, N_EMBD)
        t(p + "ffn_down.weight", N_EMBD, N_FF)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n_vocab


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: tiny_gguf.py OUTPUT.gguf")
    n = write_tiny_gguf(sys.argv[1])
    print("%s: llama, %d tokens, n_embd %d, %d layers" % (sys.argv[1], n, N_EMBD, N_LAYER))
