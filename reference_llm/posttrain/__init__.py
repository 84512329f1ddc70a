"""Post-training: chat data, SFT (full or LoRA), DPO and a reward model, on one shared run plumbing.

    python -m reference_llm.posttrain.sft --checkpoint runs/demo
    python -m reference_llm.posttrain.dpo --checkpoint runs/demo-sft

`run.py` holds what every post-training method shares (config, engine, checkpoints, resume);
`data.py` reads conversations and preference pairs; the chat template lives with the tokenizer
(`reference_llm.tokenizer.chat`). See docs/post_training.md.
"""
