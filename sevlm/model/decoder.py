"""Building the GPT-2 decoder SEVLM wraps: from a saved config, a hub name or local folder, or a
random GPT-2 of the configured size. One place decides which GPT-2 a run gets and how it is set."""

from __future__ import annotations

from typing import Any

from transformers import GPT2Config, GPT2LMHeadModel

from sevlm.model.config import SEVLMConfig

# GPT-2's "gelu_new" is the tanh approximation as five unfused element-wise ops over the
# (B, T, 4E) MLP activations; "gelu_pytorch_tanh" is the same
# function in one fused kernel (equal up to float rounding).
GELU = "gelu_pytorch_tanh"


def build_decoder(cfg: SEVLMConfig, decoder_config: Any = None):
    """GPT2LMHeadModel: from `decoder_config` (random weights, to be loaded), a hub name or
    local dir (`cfg.decoder`), or a random GPT-2 of the configured size."""
    cross = cfg.mode == "cross"
    if decoder_config is not None:
        return GPT2LMHeadModel(decoder_config)
    if cfg.decoder:
        # Hub name or local dir; cross-attention weights are new (randomly initialised).
        dcfg = GPT2Config.from_pretrained(cfg.decoder, add_cross_attention=cross)
        if dcfg.activation_function == "gelu_new":
            dcfg.activation_function = GELU
        dec = GPT2LMHeadModel.from_pretrained(cfg.decoder, config=dcfg)
        if cfg.vocab_size and dec.config.vocab_size != cfg.vocab_size:
            dec.resize_token_embeddings(cfg.vocab_size)
        return dec
    gcfg = GPT2Config(
        vocab_size=cfg.vocab_size or 50260,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        add_cross_attention=cross,
        activation_function=GELU,
        bos_token_id=cfg.eos_id,
        eos_token_id=cfg.eos_id,
        pad_token_id=cfg.pad_id,
    )
    return GPT2LMHeadModel(gcfg)
