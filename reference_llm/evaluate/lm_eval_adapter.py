"""lm-evaluation-harness adapter: a `reference_llm` checkpoint as an lm-eval model named `reference_llm`.

    python -m reference_llm.evaluate.lm_eval_adapter --model reference_llm \\
        --model_args checkpoint=runs/demo --tasks reference_llm_mc --device cpu --batch_size 8

The command is lm-eval's own command line (`lm-eval run ...`, every option of it) with two things done
first: this module is imported, which registers the model, and this project's task directory
(`lm_eval_tasks/`, holding `reference_llm_mc`) is added as `--include_path` unless one is given.
lm-eval 0.4.13 finds models only in its own registry and reads no entry points, so a bare
`lm_eval --model reference_llm` cannot know the name; from Python, importing this module is enough:

    import reference_llm.evaluate.lm_eval_adapter  # registers "reference_llm"
    lm_eval.simple_evaluate(model="reference_llm", model_args={"checkpoint": "runs/demo"}, ...)

Scoring follows this project's conventions, so that the figures equal its own evaluations:

- every context starts with `<|endoftext|>` (a document boundary, as in training; also what gives an
  empty context something to condition on), as in `choice_logprobs` and `evaluate_text`;
- context and continuation are tokenized separately, as in `choice_logprobs` (lm-eval's `hf` model
  tokenizes them together; the two agree wherever no token spans the boundary, e.g. for a character
  tokenizer, and for BPE tokenizers that split before a space);
- a sequence longer than the context window keeps its last `block_size + 1` tokens, and
  `loglikelihood_rolling` cuts a text into lm-eval's windows (each token predicted once, the last window
  with a full context), both as lm-eval's `hf` model does.

The same checkpoint exported with `python -m reference_llm.deploy.export` and run through lm-eval's `hf`
model gives the same log-likelihoods when that model is told to put the end-of-text token first:
`--model_args pretrained=DIR,add_bos_token=True` (tests/post/test_lm_eval.py).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# lm-eval registers its own models (hf, vllm, ...) only while its registry is empty: import them before
# ours is registered, or `--model hf` would no longer be found.
import lm_eval.models  # noqa: F401
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from reference_llm.deploy.generate import generate_text
from reference_llm.errors import ConfigError, DataError
from reference_llm.train.checkpoint import load_model
from reference_llm.train.perf import resolve_device

NAME = "reference_llm"
TASKS_DIR = Path(__file__).with_name("lm_eval_tasks")
# Generation settings lm-eval tasks may pass that `generate` understands; any other is refused by name.
SAMPLING_KEYS = ("top_k", "top_p")

log = logging.getLogger(__name__)

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


class ReferenceLM(LM):
    """A checkpoint written by `reference_llm` (a step directory or a run directory) for lm-eval.

    Model arguments: `checkpoint` (required), `max_gen_toks` (generation length when a task sets
    none, default 256); lm-eval's own `--batch_size` (a number) and `--device` apply.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,  # lm-eval passes it for batch_size "auto", refused here
        device: str | None = None,
        max_gen_toks: int = 256,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"unknown model argument(s) for {NAME}: {', '.join(sorted(unknown))}; "
                f"accepted: checkpoint, max_gen_toks"
            )
        if checkpoint is None:
            raise ConfigError(f"--model {NAME} needs --model_args checkpoint=DIR (a run or step directory)")
        self.batch_size = _batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if self.max_gen_toks < 1:
            raise ConfigError(f"max_gen_toks must be a positive integer, got {max_gen_toks}")
        self._device = _device(device)
        self.model, self.tokenizer, _ = load_model(checkpoint, self._device)
        self.max_length = self.model.config.block_size

    # ------------------------------------------------------------------------------------------------
    # Log-likelihoods
    # ------------------------------------------------------------------------------------------------

    def context_ids(self, text: str) -> list[int]:
        """`text`'s ids after the end-of-text token, where the tokenizer has one."""
        eot = self.tokenizer.eot_id
        return self.tokenizer.encode(text) if eot is None else [eot] + self.tokenizer.encode(text)

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives the continuation) per request."""
        pairs = []
        for context, continuation in (request.args for request in requests):
            ctx, cont = self.context_ids(context), self.tokenizer.encode(continuation)
            if not ctx:
                raise DataError("an empty context needs a tokenizer with an end-of-text token to condition on")
            if len(cont) > self.max_length:
                raise DataError(
                    f"a continuation of {len(cont)} tokens does not fit the model's block_size "
                    f"{self.max_length}: {continuation[:40]!r}..."
                )
            pairs.append((ctx, cont))
        results = self.score(pairs)
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        """log p(text) per request, every token predicted once in lm-eval's windows of `block_size`."""
        pairs: list[Pair] = []
        owner: list[int] = []  # the request each window belongs to
        for index, (text,) in enumerate(request.args for request in requests):
            ids, prefix = self.tokenizer.encode(text), self.tokenizer.eot_id
            if prefix is None:  # no <|endoftext|> to predict the first token from: it is context only,
                if not ids:  # as in `evaluate_text`
                    raise DataError("a tokenizer without an end-of-text token cannot score an empty text")
                prefix, ids = ids[0], ids[1:]
            windows = get_rolling_token_windows(
                token_list=ids, prefix_token=prefix, max_seq_len=self.max_length, context_len=1
            )
            for window in windows:
                pairs.append(make_disjoint_window(window))
                owner.append(index)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, self.score(pairs)):
            totals[index] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    @torch.no_grad()
    def score(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities of the continuation, whether each of its tokens is the argmax) per
        (context ids, continuation ids), in batches of `batch_size`.

        The input is the last `block_size` tokens before the continuation's last one, so a context is
        cut from the left only when context + continuation exceed `block_size + 1` tokens.
        """
        results: list[tuple[float, bool]] = [(0.0, True)] * len(pairs)  # an empty continuation: log 1
        inputs = {i: (ctx + cont)[-(self.max_length + 1) : -1] for i, (ctx, cont) in enumerate(pairs) if cont}
        # Longest first: each batch pads to its first row, and a batch too large for memory fails at once.
        order = sorted(inputs, key=lambda i: -len(inputs[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            x = torch.zeros(len(batch), len(inputs[batch[0]]), dtype=torch.long)
            for row, i in enumerate(batch):
                x[row, : len(inputs[i])] = torch.tensor(inputs[i])  # right padding: no position sees a pad
            logits = self.model(x.to(self._device))[0]
            for row, i in enumerate(batch):
                cont = torch.tensor(pairs[i][1], device=self._device)
                end = len(inputs[i])
                # The last len(cont) positions predict the continuation's tokens.
                logprobs = torch.log_softmax(logits[row, end - len(cont) : end].float(), dim=-1)
                results[i] = (
                    logprobs.gather(-1, cont[:, None]).sum().item(),
                    bool((logprobs.argmax(dim=-1) == cont).all()),
                )
        return results

    # ------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context until one of its `until` strings (cut from the text), the end-of-text
        token, `max_gen_toks` tokens or the end of the context window, with the KV cache. Requests with
        the same generation settings run as one batch of ragged prompts."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        outputs = [""] * len(requests)
        for indices in groups.values():
            settings = normalize_gen_kwargs(requests[indices[0]].args[1], default_max_gen_toks=self.max_gen_toks)
            max_new, until = settings.pop("max_gen_toks"), settings.pop("until")
            temperature = float(settings.pop("temperature", 0.0)) if settings.pop("do_sample", False) else 0.0
            sampling = {key: settings.pop(key) for key in SAMPLING_KEYS if key in settings}
            if settings:
                raise ConfigError(
                    f"generation setting(s) {', '.join(sorted(settings))} are not supported by "
                    f"{NAME}; it takes until, max_gen_toks, do_sample, temperature, top_k, top_p"
                )
            # Room for the new tokens: a long prompt keeps its end, as lm-eval's hf model does.
            keep = max(1, self.max_length - max_new)
            prompts = [self.context_ids(requests[i].args[0])[-keep:] for i in indices]
            for start in range(0, len(indices), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                texts = generate_text(
                    self.model, self.tokenizer, prompts[chunk], max_new, stop=until, temperature=temperature, **sampling
                )
                for i, text in zip(indices[chunk], texts):
                    outputs[i] = text
        for request, text in zip(requests, outputs):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return outputs


def _batch_size(value: int | str | None) -> int:
    """lm-eval passes --batch_size as given: a number here (no "auto": our models report no memory
    use to search over)."""
    text = str(1 if value is None else value)
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--batch_size for {NAME} must be a positive integer, got {value!r}")
    return int(text)


def _device(name: str | None) -> torch.device:
    """lm-eval's command line asks for cuda:0 unless told otherwise; like its hf model, fall back to
    the machine's device when CUDA is not there."""
    if name is None:
        return resolve_device("auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; using the CPU", name)
        return resolve_device("auto")
    return resolve_device(name)


def register() -> None:
    """Make `--model reference_llm` known to lm-eval. Once per process: run as
    `python -m reference_llm.evaluate.lm_eval_adapter`, this file is module `__main__`, and an import
    of it under its package name later must not register a second class under the same name."""
    if NAME not in model_registry:
        register_model(NAME)(ReferenceLM)


register()


def main(argv: list[str]) -> int:
    """lm-eval's command line, with `reference_llm` registered and this project's tasks included."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(argv)
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    has_include = any(arg == "--include_path" or arg.startswith("--include_path=") for arg in argv)
    if argv and not wants_help and not has_include:
        argv += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["python -m reference_llm.evaluate.lm_eval_adapter", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    from reference_llm.cli import run_main

    sys.exit(run_main(main))
