"""The dataset of the `reference_llm_mc` task: the multiple-choice JSON lines beside this file, read
with the project's own `load_items` (so the task sees exactly the items `evaluate_multiple_choice` does)."""

from __future__ import annotations

from pathlib import Path

import datasets

from reference_llm.evaluate.multiple_choice import load_items

ITEMS_FILE = Path(__file__).with_name("reference_llm_mc.jsonl")


def load(**_metadata: object) -> datasets.DatasetDict:
    """lm-eval calls a task's `custom_dataset` with the run's metadata as keywords; the items do not
    depend on it."""
    rows = [
        {"context": item.context, "choices": list(item.choices), "answer": item.answer}
        for item in load_items(ITEMS_FILE)
    ]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
