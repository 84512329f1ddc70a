"""Deployment: generation with a KV cache, weight-only quantization, HF export/import and an
OpenAI-compatible server.

    python -m reference_llm.deploy.generate --checkpoint runs/demo --prompt "To be"
    python -m reference_llm.deploy.quantize --checkpoint runs/demo --bits 8 --out runs/demo-int8
    python -m reference_llm.deploy.export --checkpoint runs/demo --out hf/demo
    python -m reference_llm.deploy.serve --checkpoint runs/demo
"""
