"""reference_llm: a readable PyTorch implementation of every step of building an LLM, one package per
pipeline stage: tokenizer/, data/, model/, train/, distributed/, posttrain/, evaluate/, deploy/.
See docs/architecture.md."""

from reference_llm import _compat

_compat.install()
