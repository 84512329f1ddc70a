"""Every error the generator raises on purpose.

Each message is one line meant for a user: it names the flag, question, key or file at fault and what
is accepted. `generator.cli` is the one place that prints them (`error: <message>` on stderr) and exits
with `exit_code`; no traceback is ever shown for these.
"""

from __future__ import annotations


class LLMGenError(Exception):
    """Base class: a problem with the user's input or files, not a bug. Exit code 2."""

    exit_code = 2


class EstimateError(LLMGenError):
    """A hardware, budget, model or parallelism description the estimator cannot use."""


class AnswerError(LLMGenError):
    """An answer to a `llmgen new` question (flag, prompt or answers file) is invalid or missing."""


class TrackDataError(LLMGenError):
    """A track file in tracks/ is malformed: a missing or unknown key, a bad value, a broken step graph."""


class TargetError(LLMGenError):
    """The directory to generate into cannot be used (not empty without --force, not a directory)."""


class RenderError(LLMGenError):
    """The template could not be rendered, or the rendered project could not be put in place."""


class ComplianceError(LLMGenError):
    """The compliance check cannot run: not a generated repository, or an unreadable manifest."""


class TemplateRepoError(LLMGenError):
    """The template cache cannot be created or read (git missing, folder not writable, ...)."""


class UpdateError(LLMGenError):
    """`llmgen update` cannot run here: not a generated repository, uncommitted changes, newer template."""


class CalibrateError(LLMGenError):
    """`llmgen calibrate` cannot read the run: no such directory, no metrics, a corrupt record, too few steps."""
