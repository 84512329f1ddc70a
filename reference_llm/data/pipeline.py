"""The text stages of data preparation: normalise -> quality filters -> exact and near dedup -> PII scrub,
then the train/validation split. Every stage records what it removed in a JSON-serialisable report.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from reference_llm.data.clean import normalize_text
from reference_llm.data.dedup import DedupSettings, choose_bands, exact_dedup, near_dedup
from reference_llm.data.documents import Document
from reference_llm.data.filters import FilterSettings, apply_filters
from reference_llm.data.pii import scrub_pii
from reference_llm.data.progress import Steps
from reference_llm.errors import ConfigError

MAX_REPORT_ITEMS = 100  # per list in the report; counts are always complete


@dataclass(frozen=True)
class PipelineSettings:
    """Everything besides DataConfig that changes the prepared data (and therefore its cache key)."""

    filters: FilterSettings = field(default_factory=FilterSettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    scrub_pii: bool = True
    shard_tokens: int = 100_000_000  # tokens per shard file (nanoGPT's FineWeb shards hold 1e8)

    def __post_init__(self) -> None:
        if self.shard_tokens < 1:
            raise ConfigError(f"shard_tokens must be positive, got {self.shard_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineSettings:
        """Copy with dotted keys replaced, e.g. {"filters.min_chars": 50, "scrub_pii": False}."""
        values: dict[str, dict[str, Any]] = {"filters": {}, "dedup": {}, "": {}}
        for key, value in overrides.items():
            if key not in setting_keys():
                raise ConfigError(f"unknown data pipeline setting {key!r}; known: {', '.join(setting_keys())}")
            section, _, name = key.rpartition(".")
            current = getattr(getattr(self, section) if section else self, name)
            if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(current):
                raise ConfigError(f"{key} must be {type(current).__name__}, got {value!r}")
            values[section][name] = value
        return dataclasses.replace(
            self, filters=dataclasses.replace(self.filters, **values["filters"]),
            dedup=dataclasses.replace(self.dedup, **values["dedup"]), **values[""],
        )


def setting_keys() -> list[str]:
    """The dotted names `PipelineSettings.with_overrides` accepts."""
    keys = []
    for f in dataclasses.fields(PipelineSettings):
        if f.name in ("filters", "dedup"):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(getattr(PipelineSettings(), f.name))]
        else:
            keys.append(f.name)
    return keys


def _capped(items: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"items": items[:MAX_REPORT_ITEMS]}
    if len(items) > MAX_REPORT_ITEMS:
        out["not_listed"] = len(items) - MAX_REPORT_ITEMS
    return out


def clean_documents(docs: list[Document], settings: PipelineSettings,
                    steps: Steps | None = None) -> tuple[list[Document], dict[str, Any]]:
    """Run the text stages over `docs`; return the surviving documents and the report."""
    steps = steps or Steps(enabled=False)
    report: dict[str, Any] = {"documents_in": len(docs), "chars_in": sum(len(d.text) for d in docs)}

    docs = [Document(d.source, normalize_text(d.text)) for d in steps.track(docs, "normalising")]
    report["chars_after_normalising"] = sum(len(d.text) for d in docs)

    docs, dropped = apply_filters(docs, settings.filters)
    report["filters"] = {name: {"dropped": len(sources), **_capped(sources)} for name, sources in dropped.items()}

    if settings.dedup.exact:
        docs, dups = exact_dedup(docs)
        report["exact_dedup"] = {"dropped": len(dups), **_capped([dataclasses.asdict(d) for d in dups])}
    if settings.dedup.near and len(docs) > 1:
        with steps.step("near-duplicate search"):
            docs, dups = near_dedup(docs, settings.dedup)
        bands, rows = choose_bands(settings.dedup.num_perm, settings.dedup.threshold)
        report["near_dedup"] = {"dropped": len(dups), "threshold": settings.dedup.threshold, "bands": bands,
                                "rows": rows, **_capped([dataclasses.asdict(d) for d in dups])}

    if settings.scrub_pii:
        scrubbed, findings = [], []
        for doc in steps.track(docs, "scrubbing PII"):
            text, found = scrub_pii(doc.text)
            scrubbed.append(Document(doc.source, text))
            findings += [{"source": doc.source, "kind": f.kind, "start": f.start, "end": f.end} for f in found]
        docs = scrubbed
        report["pii"] = {
            "replaced": len(findings),
            "by_kind": dict(sorted(Counter(f["kind"] for f in findings).items())),
            "documents": len({f["source"] for f in findings}),
            **_capped(findings),
        }

    report["documents_out"] = len(docs)
    report["chars_out"] = sum(len(d.text) for d in docs)
    return docs, report


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents for validation; a single document is split by text, its last part held out.

    With several documents, the held-out ones are picked by the sha256 of their text: a stable choice that
    does not depend on file names or order, and that stays put when other documents are added. At least
    one document goes to each side. A single document is cut at the first line break after
    (1 - val_fraction) of its characters, as nanoGPT cuts its Shakespeare file.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if len(docs) == 1:
        (doc,) = docs
        cut = int(len(doc.text) * (1.0 - val_fraction))
        newline = doc.text.find("\n", cut)
        if newline != -1:
            cut = newline + 1
        return [Document(doc.source, doc.text[:cut])], [Document(doc.source, doc.text[cut:])]
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    by_hash = sorted(range(len(docs)), key=lambda i: hashlib.sha256(docs[i].text.encode("utf-8")).hexdigest())
    val_ids = set(by_hash[:n_val])
    return ([d for i, d in enumerate(docs) if i not in val_ids], [d for i, d in enumerate(docs) if i in val_ids])
