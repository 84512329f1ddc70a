"""SPDX licence expressions of data files: their ids, whether SPDX knows them, and which terms constrain a
model trained on the data (share-alike, copyleft, non-commercial, no-derivatives).

The known ids come from `spdx_ids.txt`, a copy of the SPDX License List shipped with this package, so
that checking a licence never needs the network. `LicenseRef-<name>` is SPDX's form for anything else.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

SPDX_IDS_FILE = Path(__file__).with_name("spdx_ids.txt")
_SPDX_ID = re.compile(r"^(?:LicenseRef-[A-Za-z0-9.-]+|[A-Za-z0-9][A-Za-z0-9.+-]*)$")
_OPERATORS = {"AND", "OR", "WITH"}
UNKNOWN_LICENSES = {"NOASSERTION", "NONE", "UNKNOWN"}

# (prefix of an SPDX id, why it matters for a model trained on the data). Share-alike and copyleft terms
# may require derived works to carry the same licence; whether model weights are a derived work is not
# settled, so the decision belongs in COMPLIANCE.md.
_LICENSE_NOTES: tuple[tuple[str, str], ...] = (
    ("CC-BY-NC-SA-", "non-commercial and share-alike"),
    ("CC-BY-NC-ND-", "non-commercial and no-derivatives"),
    ("CC-BY-NC-", "non-commercial"),
    ("CC-BY-ND-", "no-derivatives"),
    ("CC-BY-SA-", "share-alike"),
    ("AGPL-", "strong copyleft, network use counts as distribution"),
    ("GPL-", "copyleft"),
    ("LGPL-", "weak copyleft"),
    ("MPL-", "weak copyleft"),
    ("EUPL-", "copyleft"),
    ("OSL-", "copyleft"),
    ("ODbL-", "share-alike (database licence)"),
    ("CDLA-Sharing-", "share-alike (data licence)"),
    ("GFDL-", "copyleft (documentation licence)"),
)


def parse_spdx(expression: str) -> tuple[list[str], str | None]:
    """The licence ids of an SPDX expression such as "MIT OR Apache-2.0", and an error text if malformed."""
    tokens = expression.replace("(", " ").replace(")", " ").split()
    ids = [t for t in tokens if t not in _OPERATORS]
    if not ids:
        return [], "is empty; use an SPDX id such as CC-BY-4.0 (https://spdx.org/licenses/)"
    for spdx_id in ids:
        if spdx_id.upper() in UNKNOWN_LICENSES:
            return ids, "says the licence is unknown: find it before training on the file"
        if not _SPDX_ID.match(spdx_id):
            return ids, (
                f"has {spdx_id!r}, which is not an SPDX licence id; use one from https://spdx.org/licenses/ "
                f"or LicenseRef-<name> for anything else"
            )
    return ids, None


def licence_note(spdx_id: str) -> str | None:
    """Why a licence needs a recorded decision (share-alike, copyleft, NC, ND), or None."""
    for prefix, note in _LICENSE_NOTES:
        if spdx_id.startswith(prefix):
            return note
    return None


@cache
def known_ids() -> dict[str, bool]:
    """SPDX licence and exception ids, spelt as SPDX spells them -> deprecated?"""
    out: dict[str, bool] = {}
    for line in SPDX_IDS_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            spdx_id, _, flag = line.partition(" ")
            out[spdx_id] = flag == "deprecated"
    return out


def check_licence(expression: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for a licence expression: a problem for anything malformed, unknown or not on the
    SPDX list (SPDX ids are matched exactly, as the list spells them); notes for deprecated ids and for
    terms that constrain sharing a trained model."""
    ids, error = parse_spdx(expression)
    if error:
        return [f"licence {expression!r} {error}"], []
    problems, notes = [], []
    known = known_ids()
    spelled = {k.lower(): k for k in known}
    for spdx_id in ids:
        if spdx_id.startswith("LicenseRef-"):
            continue
        if spdx_id not in known:
            hint = f" (SPDX spells it {spelled[spdx_id.lower()]})" if spdx_id.lower() in spelled else ""
            problems.append(
                f"{spdx_id!r} is not on the SPDX License List{hint}; see https://spdx.org/licenses/ "
                f"or write LicenseRef-<name> for a licence that is not on it"
            )
        elif known[spdx_id]:
            notes.append(f"{spdx_id} is deprecated by SPDX; see https://spdx.org/licenses/ for its replacement")
        note = licence_note(spdx_id)
        if note:
            notes.append(
                f"{spdx_id} is {note}: record in COMPLIANCE.md whether and how a model trained on it may be shared"
            )
    return problems, notes
