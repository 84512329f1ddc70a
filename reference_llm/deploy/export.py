"""Export to, and import from, the Hugging Face `transformers` layout.

    export_hf(model, tokenizer, "hf_out/")     # config.json, model.safetensors, tokenizer.json, tokenizer_config.json
    model, tokenizer = import_hf("hf_out/")    # back into our Transformer (no transformers needed)

A GPT-2-style config (LayerNorm, learned positions, GELU) becomes `GPT2LMHeadModel`; a Llama-style one
(RMSNorm, RoPE, SwiGLU) becomes `LlamaForCausalLM`. The result loads offline with
`AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)` and gives the same logits as our model
(tests/post/test_export_hf.py checks a max abs difference of at most 1e-4 in float32).

How the tensors map (our names are in docs/architecture.md; `hf_names(config)` is the one table that
both directions read):

- GPT-2: `transformers` uses `Conv1D`, which stores a Linear weight transposed (in, out), so every
  matrix is transposed; q|k|v stay fused in `c_attn` in the same row order. GPT-2's GELU is the tanh
  approximation, "gelu_new" in `transformers`, which is what our model computes. HF GPT-2 always has
  biases: a model with `bias=False` is exported with zero biases, which computes exactly the same
  function; our own config goes into config.json under "reference_llm" so that `import_hf` restores
  `bias=False`. HF GPT-2 has no grouped-query attention, so `n_kv_head < n_head` is refused.
- Llama: the fused qkv rows split into q_proj, k_proj, v_proj and the fused SwiGLU `fc` rows into
  gate_proj then up_proj. Our RoPE already uses HF's rotate-half layout, so no permutation of q/k rows
  is needed. Llama has one bias switch per kind (attention_bias, mlp_bias); ours sets both.
- A "custom" mix of components has no equivalent and is refused with the components named.

The tokenizer: a BPE tokenizer's own tokenizer.json is already HF's format. A character tokenizer is
written as a BPE model with no merges (every character its own token), which HF `tokenizers` encodes
identically. tokenizer_config.json makes `AutoTokenizer` use it, with the chat template when the
tokenizer has the chat tokens.

CLI:
    python -m reference_llm.deploy.export --checkpoint runs/demo --out hf/demo [--dtype bfloat16]
    python -m reference_llm.deploy.export --import-hf hf/demo --out runs/imported
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from reference_llm.cli import ArgumentParser
from reference_llm.errors import CheckpointError, ConfigError, TokenizerError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train.checkpoint import load_model, save_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
OUR_CONFIG_KEY = "reference_llm"  # our ModelConfig, kept inside config.json for an exact round trip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # transformers' names for GPT-2's tanh-approximated GELU
_ARCH_NEEDS = "gpt2 (norm=layernorm, position=learned, mlp=gelu) or llama (norm=rmsnorm, position=rope, mlp=swiglu)"


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def export_hf(model: Transformer, tokenizer, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write `model` (and `tokenizer`, if given) in the `transformers` layout; returns `out_dir`."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if any(type(m).__name__ == "QuantizedLinear" for m in model.modules()):
        raise ConfigError("cannot export a quantized model to Hugging Face; export the unquantized checkpoint")
    config = model.config
    check_exportable(config)
    state = {name: t.detach().to("cpu", DTYPES[dtype]).contiguous() for name, t in _to_hf_tensors(model).items()}
    hf_config = hf_config_dict(config, tokenizer, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        (out / TOKENIZER_FILE).write_bytes(hf_tokenizer_json(tokenizer))
        (out / TOKENIZER_CONFIG).write_text(
            json.dumps(_tokenizer_config(tokenizer, config), indent=2) + "\n", encoding="utf-8"
        )
    return out


def check_exportable(config: ModelConfig) -> None:
    """ConfigError, naming what does not fit, when `transformers` has no class for this config."""
    if config.arch == "custom":
        raise ConfigError(
            f"cannot export to Hugging Face: norm={config.norm}, position={config.position}, "
            f"mlp={config.mlp} is a custom mix; supported: {_ARCH_NEEDS}"
        )
    if config.arch == "gpt2" and config.n_kv_head != config.n_head:
        raise ConfigError(
            f"cannot export to GPT2LMHeadModel: it has no grouped-query attention, but "
            f"model.n_kv_head={config.n_kv_head} < model.n_head={config.n_head}"
        )


def hf_config_dict(config: ModelConfig, tokenizer=None, dtype: str = "float32") -> dict[str, Any]:
    """config.json for `GPT2LMHeadModel` or `LlamaForCausalLM`."""
    eot = None if tokenizer is None else tokenizer.eot_id
    common = {
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
        OUR_CONFIG_KEY: config.to_dict(),
    }
    if config.arch == "gpt2":
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_positions": config.block_size,
            "n_embd": config.d_model,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.ffn_hidden,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps,
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            **common,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "attention_dropout": config.dropout,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,
        **common,
    }


@dataclass(frozen=True)
class Link:
    """One tensor of ours and the Hugging Face tensor(s) that hold it.

    - `hf`: several names when our fused tensor is their row-wise concatenation (Llama's q|k|v and
      SwiGLU gate|up); `rows` then gives each part's number of rows, in order.
    - `ours` None: HF has a tensor our config lacks. Only GPT-2's biases of a `bias=False` model:
      export writes zeros of length `rows[0]` (the same function), import drops them.
    - `transpose`: GPT-2's `Conv1D` stores a Linear weight as (in, out).
    """

    ours: str | None
    hf: tuple[str, ...]
    rows: tuple[int, ...] = ()
    transpose: bool = False


def hf_names(config: ModelConfig) -> list[Link]:
    """The name table for `config`: the one place export and import learn how our tensors map to
    `GPT2LMHeadModel` / `LlamaForCausalLM` (the config must pass `check_exportable`)."""
    # ModelConfig.__post_init__ fills in the defaults of these two.
    assert config.n_kv_head is not None and config.ffn_hidden is not None
    C, kv, F = config.d_model, config.n_kv_head * config.head_dim, config.ffn_hidden
    links: list[Link] = []
    if config.arch == "gpt2":
        p = "transformer."
        links += [Link("tok_emb.weight", (p + "wte.weight",)), Link("pos_emb.weight", (p + "wpe.weight",))]
        # (ours, theirs, output width) per block; the width sizes the zero bias of a bias-free model.
        layers = [
            ("attn_norm", "ln_1", C),
            ("attn.qkv", "attn.c_attn", C + 2 * kv),
            ("attn.proj", "attn.c_proj", C),
            ("mlp_norm", "ln_2", C),
            ("mlp.fc", "mlp.c_fc", F),
            ("mlp.proj", "mlp.c_proj", C),
        ]
        for i in range(config.n_layer):
            for ours, theirs, width in layers:
                o, h = f"blocks.{i}.{ours}", f"{p}h.{i}.{theirs}"
                links.append(Link(f"{o}.weight", (f"{h}.weight",), transpose=not ours.endswith("norm")))
                links.append(Link(f"{o}.bias" if config.bias else None, (f"{h}.bias",), rows=(width,)))
        links.append(Link("norm_f.weight", (p + "ln_f.weight",)))
        links.append(Link("norm_f.bias" if config.bias else None, (p + "ln_f.bias",), rows=(C,)))
    else:
        p = "model."
        links.append(Link("tok_emb.weight", (p + "embed_tokens.weight",)))
        for i in range(config.n_layer):
            o, h = f"blocks.{i}.", f"{p}layers.{i}."
            links += [
                Link(o + "attn_norm.weight", (h + "input_layernorm.weight",)),
                Link(o + "mlp_norm.weight", (h + "post_attention_layernorm.weight",)),
            ]
            for kind in ("weight", "bias") if config.bias else ("weight",):
                links += [
                    Link(
                        f"{o}attn.qkv.{kind}", tuple(f"{h}self_attn.{x}_proj.{kind}" for x in "qkv"), rows=(C, kv, kv)
                    ),
                    Link(f"{o}attn.proj.{kind}", (f"{h}self_attn.o_proj.{kind}",)),
                    Link(f"{o}mlp.fc.{kind}", (f"{h}mlp.gate_proj.{kind}", f"{h}mlp.up_proj.{kind}"), rows=(F, F)),
                    Link(f"{o}mlp.proj.{kind}", (f"{h}mlp.down_proj.{kind}",)),
                ]
        links.append(Link("norm_f.weight", (p + "norm.weight",)))
    if not config.tie_embeddings:
        links.append(Link("lm_head.weight", ("lm_head.weight",)))
    return links


def _to_hf_tensors(model: Transformer) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for link in hf_names(model.config):
        if link.ours is None:
            out[link.hf[0]] = torch.zeros(link.rows[0])
            continue
        tensor = sd[link.ours].t() if link.transpose else sd[link.ours]
        parts = tensor.split(list(link.rows)) if len(link.hf) > 1 else (tensor,)
        out.update(zip(link.hf, parts, strict=True))
    return out


def hf_tokenizer_json(tokenizer) -> bytes:
    """tokenizer.json bytes that HF `tokenizers` loads and that encode exactly as `tokenizer` does."""
    from reference_llm.tokenizer import CharTokenizer

    if isinstance(tokenizer, CharTokenizer):
        return _char_tokenizer_json(tokenizer)
    data = tokenizer.to_bytes()
    if b'"model"' not in data:
        raise TokenizerError(f"cannot export a {tokenizer.kind!r} tokenizer to tokenizer.json")
    return data  # the BPE tokenizers already write HF's format


def _char_tokenizer_json(tokenizer) -> bytes:
    """A BPE model with no merges splits text into characters: a character tokenizer in HF's format.
    No pre-tokenizer (the whole text is one "word"), and a Fuse decoder to join tokens without spaces."""
    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    vocab.update(tokenizer.special_tokens)
    obj: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for s, i in sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def _is_char_tokenizer_json(obj: dict[str, Any]) -> bool:
    model = obj.get("model") or {}
    return (
        model.get("type") == "BPE"
        and model.get("merges") == []
        and obj.get("pre_tokenizer") is None
        and obj.get("decoder") == {"type": "Fuse"}
    )


def _tokenizer_config(tokenizer, config: ModelConfig) -> dict[str, Any]:
    from reference_llm.tokenizer.chat import ASSISTANT, CHAT_TOKENS, END, ROLE_TOKENS

    eot = None
    if tokenizer.eot_id is not None:
        eot = next(s for s, i in tokenizer.special_tokens.items() if i == tokenizer.eot_id)
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config.block_size,
        "bos_token": eot,
        "eos_token": eot,
        "unk_token": None,
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    if all(t in tokenizer.special_tokens for t in CHAT_TOKENS):
        # The same text as reference_llm.tokenizer.chat.render_chat; HF splits out the markers as special tokens.
        roles = "".join(
            f"{{% {'if' if i == 0 else 'elif'} message['role'] == '{role}' %}}{token}"
            for i, (role, token) in enumerate(ROLE_TOKENS.items())
        )
        out["chat_template"] = (
            f"{{% for message in messages %}}{roles}{{% endif %}}{{{{ message['content'] }}}}{END}"
            f"{{% endfor %}}{{% if add_generation_prompt %}}{ASSISTANT}{{% endif %}}"
        )
    return out


# ----------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------


def import_hf(path: str | Path, with_tokenizer: bool = True) -> tuple[Transformer, Any]:
    """(Transformer, Tokenizer or None) from a `GPT2LMHeadModel` / `LlamaForCausalLM` directory with
    config.json and safetensors weights (pickle files such as pytorch_model.bin are never read)."""
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path} not found: expected a Hugging Face model directory")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_path} is not readable JSON ({exc})") from None
    tensors = _read_hf_weights(directory)
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        config, tensors = _from_gpt2(hf, tensors, config_path)
    elif model_type == "llama":
        config, tensors = _from_llama(hf, tensors, config_path)
    else:
        raise ConfigError(f"{config_path}: model_type {model_type!r} cannot be imported; supported: gpt2, llama")
    weights = _from_hf_tensors(config, tensors, config_path)
    from reference_llm.train.checkpoint import load_weights  # names the first missing/mis-shaped tensor

    model = Transformer(config)
    try:
        load_weights(model, weights)
    except CheckpointError as exc:
        raise CheckpointError(f"{directory}: {exc}") from None
    tokenizer = None
    if with_tokenizer and (directory / TOKENIZER_FILE).is_file():
        tokenizer = _load_hf_tokenizer(directory / TOKENIZER_FILE)
    return model.eval(), tokenizer


def _read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = [directory / WEIGHTS_FILE]
    index = directory / WEIGHTS_INDEX
    if not files[0].is_file() and index.is_file():  # a sharded checkpoint
        try:
            shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, KeyError, json.JSONDecodeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index ({exc!r})") from None
        files = [directory / name for name in shard_names]
    if not files[0].is_file():
        pickles = sorted(p.name for p in directory.glob("*.bin"))
        hint = f" ({', '.join(pickles)} not read: pickle files are never loaded)" if pickles else ""
        raise CheckpointError(f"{directory / WEIGHTS_FILE} not found{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                tensors.update({name: f.get_tensor(name) for name in f.keys()})
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{file} is corrupt or unreadable ({exc})") from None
    return {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}


def _require(hf: dict[str, Any], key: str, source: Path, accepted: tuple | None = None) -> Any:
    if key not in hf:
        raise ConfigError(f"{source}: key {key!r} is missing")
    if accepted is not None and hf[key] not in accepted:
        raise ConfigError(f"{source}: {key}={hf[key]!r} is not supported; accepted: {', '.join(map(repr, accepted))}")
    return hf[key]


def _ours(hf: dict[str, Any]) -> dict[str, Any]:
    stored = hf.get(OUR_CONFIG_KEY)
    return stored if isinstance(stored, dict) else {}


def _from_gpt2(
    hf: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Our config for a GPT-2 config.json, and its tensors under the names `hf_names` expects."""
    _require(hf, "activation_function", source, _TANH_GELU)
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights", True) is not True:
        raise ConfigError(
            f"{source}: only scale_attn_weights=true and scale_attn_by_inverse_layer_idx=false match our attention"
        )
    if hf.get("add_cross_attention"):
        raise ConfigError(f"{source}: add_cross_attention=true (an encoder-decoder) cannot be imported")
    d_model = _require(hf, "n_embd", source)
    config_fields = dict(
        vocab_size=_require(hf, "vocab_size", source),
        block_size=_require(hf, "n_positions", source),
        n_layer=_require(hf, "n_layer", source),
        n_head=_require(hf, "n_head", source),
        d_model=d_model,
        ffn_hidden=hf.get("n_inner") or 4 * d_model,
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        name=_ours(hf).get("name", "custom"),
    )
    # Old checkpoints (OpenAI's own) have no "transformer." prefix and carry the attention mask buffers.
    if not any(name.startswith("transformer.") for name in tensors):
        tensors = {("lm_head.weight" if n == "lm_head.weight" else "transformer." + n): t for n, t in tensors.items()}
    tensors = {n: t for n, t in tensors.items() if not n.endswith((".attn.bias", ".attn.masked_bias"))}
    biases = [t for n, t in tensors.items() if n.endswith(".bias")]
    # bias=False was exported as zero biases; restore it only where they are zero, i.e. the same function.
    bias = not (_ours(hf).get("bias") is False and all(not t.any() for t in biases))
    return ModelConfig.gpt2_style(bias=bias, **config_fields), tensors


def _from_llama(
    hf: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Our config for a Llama config.json, and its tensors without the RoPE buffers we compute."""
    _require(hf, "hidden_act", source, ("silu",))
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{source}: RoPE scaling {rope_type!r} is not supported; accepted: 'default' (none)")
    d_model, n_head = _require(hf, "hidden_size", source), _require(hf, "num_attention_heads", source)
    if hf.get("head_dim") not in (None, d_model // n_head):
        raise ConfigError(
            f"{source}: head_dim={hf['head_dim']} differs from hidden_size/num_attention_heads="
            f"{d_model // n_head}; our attention needs them equal"
        )
    bias = bool(hf.get("attention_bias", False))
    if bool(hf.get("mlp_bias", False)) != bias:
        raise ConfigError(f"{source}: attention_bias and mlp_bias differ; our model has one bias switch for both")
    config = ModelConfig.llama_style(
        vocab_size=_require(hf, "vocab_size", source),
        block_size=_require(hf, "max_position_embeddings", source),
        n_layer=_require(hf, "num_hidden_layers", source),
        n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head,
        d_model=d_model,
        ffn_hidden=_require(hf, "intermediate_size", source),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        bias=bias,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        name=_ours(hf).get("name", "custom"),
    )
    return config, {n: t for n, t in tensors.items() if not n.endswith("rotary_emb.inv_freq")}


def _from_hf_tensors(config: ModelConfig, tensors: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Our state dict from HF's tensors, read through `hf_names`; every HF tensor must be used."""
    weights: dict[str, torch.Tensor] = {}
    for link in hf_names(config):
        parts = [_pop(tensors, name, source) for name in link.hf]
        if link.ours is not None:  # None: zero biases of a bias-free GPT-2, checked zero by _from_gpt2
            tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            weights[link.ours] = tensor.t() if link.transpose else tensor
    if config.tie_embeddings:
        tensors.pop("lm_head.weight", None)  # some writers store the tied head too
    if tensors:
        extra = ", ".join(sorted(tensors)[:3])
        raise CheckpointError(
            f"{source.parent}: {len(tensors)} tensor(s) that {source.name} does not describe, "
            f"e.g. {extra} (does config.json match the weights?)"
        )
    return weights


def _pop(tensors: dict[str, torch.Tensor], name: str, source: Path) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointError(f"{source.parent}: tensor {name!r} is missing (does config.json match the weights?)")
    return tensors.pop(name)


def _load_hf_tokenizer(path: Path):
    from reference_llm.tokenizer import CharTokenizer, load_tokenizer

    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path} is not readable JSON ({exc})") from None
    if _is_char_tokenizer_json(obj):
        specials = {t["content"]: t["id"] for t in obj.get("added_tokens", [])}
        by_id = {i: s for s, i in obj["model"]["vocab"].items() if s not in specials}
        chars = [by_id[i] for i in range(len(by_id))]
        return CharTokenizer(chars, [s for s, _ in sorted(specials.items(), key=lambda item: item[1])])
    return load_tokenizer(path)


# ----------------------------------------------------------------------------------------------------
# Checkpoint <-> directory, and the command line
# ----------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = ArgumentParser(
        prog="python -m reference_llm.deploy.export",
        description="Export a checkpoint to the Hugging Face transformers layout, or import one back.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="export: a step directory or a run directory")
    source.add_argument("--import-hf", metavar="DIR", help="import: a GPT-2 or Llama transformers directory")
    parser.add_argument("--out", required=True, help="export: the HF directory; import: a run directory")
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="export weight dtype")
    args = parser.parse_args(argv)
    if args.checkpoint:
        model, tokenizer, _ = load_model(args.checkpoint, "cpu")
        out = export_hf(model, tokenizer, args.out, args.dtype)
        kind = "GPT2LMHeadModel" if model.config.arch == "gpt2" else "LlamaForCausalLM"
        print(f"exported {kind} to {out}")
        return 0
    model, tokenizer = import_hf(args.import_hf)
    if tokenizer is None:
        raise TokenizerError(f"{args.import_hf} has no {TOKENIZER_FILE}; a checkpoint needs its tokenizer")
    path = save_model(model, tokenizer, args.out, note=f"imported from {args.import_hf}")
    print(f"imported {args.import_hf} into {path}")
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
