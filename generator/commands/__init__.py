"""One module per `llmgen` command; each exposes `register(app)` and `generator.cli` calls it."""
