"""Notebook cells of pretraining and what uses its model: pretrain, generate, evaluate and distributed.
The tiny pretraining run (`cells.pretrained`) is made by the pretraining notebook, or by the first notebook
that needs it."""

from __future__ import annotations

from generator.notebooks.cells import TINY_NOTE, Cell, Project, pretrained, tiny_settings


def pretrain(p: Project) -> list[Cell]:
    trainer = p.module("pretrain", "reference_llm.train")
    yours = (
        ""
        if trainer == "reference_llm.train"
        else f"`python -m {trainer}` is `python -m reference_llm.train` with your parts in it (your Block and "
        "attention in the model, your training step) once they are written and agree with reference_llm's; "
        "its first lines say which parts are yours."
    )
    overfit = p.attempt(
        "overfit_losses",
        "[train_step(net, optimizer, x, y) for _ in range(100)]",
        'print(f"loss on one batch: {overfit_losses[0]:.2f} -> {overfit_losses[-1]:.3f}")',
    )
    check_learner = p.if_written("overfit_losses", "assert overfit_losses[-1] < 0.1, overfit_losses[-1]", "train_step")
    return [
        p.md("""
            ## One training step

            Training is one step repeated: predict every next token, measure the cross-entropy, back-propagate,
            clip the gradient norm, and let AdamW update the weights. `src/<package>/train_step.py` is that
            step. The quickest test of a model and its step: it must memorise a single batch.
        """),
        p.code(
            """
            from reference_llm.model import Transformer
            from reference_llm.tokenizer import train_tokenizer
            from <package>.train_step import train_step

            tok = train_tokenizer(config.data.tokenizer, [corpus[:100_000]], 512)
            batch = torch.tensor(tok.encode(corpus[:5_000]))[: 4 * 33].view(4, 33)
            x, y = batch[:, :-1], batch[:, 1:]  # targets: the inputs shifted by one
            net = Transformer(small_model_config(config.model, vocab_size=tok.vocab_size))
            optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
        """,
            overfit,
        ),
        p.md("""
            You should see the loss fall from about 6.2 (ln 512: a uniform guess) to below 0.1. A model that
            cannot memorise one batch has a bug in its forward or backward pass.
        """),
        p.md(
            """
            ## The training command

            `python -m reference_llm.train` prepares the data (or finds it prepared), then runs the loop with a
            warm-up and cosine learning-rate schedule, logs to `metrics.jsonl`, evaluates on the held-out split
            and writes a checkpoint: weights, optimizer state and tokenizer, in safetensors and JSON.
        """,
            yours,
            TINY_NOTE,
        ),
        tiny_settings(p),
        p.code("""
            import json
            import math

            from reference_llm.train.checkpoint import resolve_checkpoint

            run(f"{PRETRAIN} checkpoint.dir={PRETRAINED}")
            records = [json.loads(line) for line in (PRETRAINED / "metrics.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in records if "loss" in r]
            evals = [r for r in records if "val_loss" in r]
            print(f"training loss: {losses[0]:.2f} at the first log, {losses[-1]:.2f} at the last; "
                  f"held-out loss {evals[-1]['val_loss']:.2f}")
            step_dir = resolve_checkpoint(PRETRAINED)  # the step folder that PRETRAINED/latest names
            print(step_dir, sorted(p.name for p in step_dir.iterdir()))
        """),
        p.md("""
            You should see `step 10/200 ... step 200/200` lines with a falling loss, the held-out loss
            (`val_loss`) at the end, and a checkpoint folder with `model.safetensors`, `optimizer.safetensors`,
            `state.json` and `tokenizer.json`. The training loss goes from about 5.5 at step 10 to about 4.2 at
            step 200 (the full run takes it much further).
        """),
        p.code(
            "# Check: what the notes above say.",
            check_learner,
            """
            assert losses[-1] < losses[0] - 0.5, losses
            assert evals and evals[-1]["val_loss"] < math.log(512), evals
            saved = {p.name for p in step_dir.iterdir()}
            assert {"model.safetensors", "state.json", "tokenizer.json"} <= saved, saved
            print("all checks passed")
        """,
        ),
    ]


def generate(p: Project) -> list[Cell]:
    sampler = p.module("generate", "reference_llm.deploy.generate")
    yours = (
        ""
        if sampler == "reference_llm.deploy.generate"
        else f" (`{sampler}` samples with your `generate` and `sample_next` once they are written and agree "
        "with reference_llm's; its first line says whose code runs)"
    )
    greedy = p.attempt(
        "greedy_ids",
        "sample_next(torch.tensor([[0.1, 3.0, -2.0], [5.0, 1.0, 4.9]]), temperature=0.0)",
        """
        draws = sample_next(logits.expand(20_000, -1), temperature=0.7, generator=torch.Generator().manual_seed(0))
        observed = torch.bincount(draws, minlength=6).float() / 20_000
        print("greedy:", greedy_ids.tolist())
        print("observed:", [round(f, 3) for f in observed.tolist()])
        print("expected:", [round(f, 3) for f in torch.softmax(logits[0] / 0.7, -1).tolist()])
    """,
    )
    ours = p.attempt(
        "our_ids",
        "learner_generate(model, prompt, 30, temperature=0.0)[0, prompt.size(1):].tolist()",
        'print("the same tokens as reference_llm:", our_ids == reference_ids)',
    )
    check_learner = p.if_written(
        "greedy_ids",
        """
        assert greedy_ids.tolist() == [1, 0]
        assert (observed - torch.softmax(logits[0] / 0.7, -1)).abs().max() < 0.02
    """,
        "sample_next",
    )
    check_generate = p.if_written("our_ids", "assert our_ids == reference_ids", "generate")
    return [
        *pretrained(p),
        p.md("""
            You should see the tiny pretraining run's checkpoint (made now if the pretraining notebook has not
            run yet) loaded back: a hundred thousand or so parameters and a 512-id tokenizer.

            ## Choosing the next token

            The model gives logits over the vocabulary; sampling turns them into one token. Temperature 0 takes
            the largest; otherwise softmax(logits / temperature) is a distribution to draw from, sharper below
            1. `src/<package>/sampling.py` writes it out; 20,000 draws should match the distribution.
        """),
        p.code(
            """
            from <package>.sampling import generate as learner_generate
            from <package>.sampling import sample_next

            logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
        """,
            greedy,
        ),
        p.md("""
            You should see `greedy: [1, 0]` (each row's largest logit) and observed frequencies within 0.02 of
            the expected ones.
        """),
        p.md("""
            ## Generating text

            Generation appends one sampled token at a time. `reference_llm.deploy.generate` keeps the keys and
            values of earlier positions (the KV cache), so each new token costs one position instead of the
            whole sequence; with or without the cache the greedy tokens are the same. Your `generate` recomputes
            everything and should agree too.
        """),
        p.code(
            """
            from reference_llm.deploy.generate import generate, generate_text

            prompt = torch.tensor([tokenizer.encode("ROMEO:")])
            reference_ids = generate(model, prompt.tolist(), max_new_tokens=30, temperature=0.0)[0]
            uncached_ids = generate(model, prompt.tolist(), max_new_tokens=30, temperature=0.0, use_cache=False)[0]
            print("with and without the KV cache:", reference_ids == uncached_ids)
        """,
            ours,
            """
            for temperature in (0.0, 0.8, 1.5):
                [text] = generate_text(model, tokenizer, ["ROMEO:"], max_new_tokens=40, temperature=temperature, seed=0)
                print(f"temperature {temperature}: {text!r}")
        """,
        ),
        p.md("""
            You should see `True` for both comparisons, then three continuations. The tiny model has seen 200
            steps of 64 kB, so expect Shakespeare-shaped noise: speaker names, line breaks, common words.
            Greedy text from a model this small tends to repeat one token (often the line break); higher
            temperatures are more varied and less coherent.
        """),
        p.md(f"The command gives the same kind of continuation{yours}:"),
        p.code(f"""
            sample = run(f'python -m {sampler} --checkpoint {{PRETRAINED}} --prompt "ROMEO:" '
                         '--max-new-tokens 40 --seed 0')
        """),
        p.md("You should see the prompt `ROMEO:` followed by 40 tokens of text."),
        p.code(
            "# Check: what the notes above say.",
            check_learner,
            check_generate,
            """
            assert reference_ids == uncached_ids and len(reference_ids) == 30
            assert "ROMEO:" in sample and len(sample.split("ROMEO:", 1)[1]) > 20, sample
            print("all checks passed")
        """,
        ),
    ]


def evaluate(p: Project) -> list[Cell]:
    return [
        *pretrained(p),
        p.md("""
            ## Held-out loss, perplexity and bits per byte

            The loss on text the model never trained on says how well it predicts. Perplexity is exp(loss): the
            number of equally likely tokens the model is as unsure as. Bits per byte divides by the text's size
            in bytes instead of tokens, so models with different tokenizers compare fairly. Three models on the
            last 5,000 characters of the corpus: the trained one, an untrained one of the same shape, and one
            whose output is all zeros (every token equally likely).
        """),
        p.code("""
            import copy

            from reference_llm.evaluate import evaluate_text
            from reference_llm.model import Transformer

            held_out = corpus[-5_000:]
            untrained = Transformer(model.config).eval()
            uniform = copy.deepcopy(model)
            with torch.no_grad():
                uniform.lm_head.weight.zero_()
            results = {name: evaluate_text(m, tokenizer, held_out)
                       for name, m in (("trained", model), ("untrained", untrained), ("uniform", uniform))}
            for name, r in results.items():
                print(f"{name:>9}: loss {r.loss:.3f}, perplexity {r.perplexity:7.1f}, {r.bits_per_byte:.3f} bits per "
                      f"byte ({r.tokens:,} tokens, {r.bytes:,} bytes)")
        """),
        p.md("""
            You should see the uniform model's perplexity equal to its vocabulary size (the embedding table,
            512 ids rounded up to a multiple of 64), the untrained model close to it, and the trained one well
            below (around 70 after 200 tiny steps; the full run goes much lower).
        """),
        p.md("""
            ## The commands

            `perplexity` scores a text file; `mc` asks multiple-choice questions (the built-in set, or your own
            JSON Lines) and counts how often the most likely answer is right. A model this small answers at
            about chance; the point is the machinery.
        """),
        p.code("""
            held_out_file = WORK / "held_out.txt"
            held_out_file.write_text(held_out, encoding="utf-8")
            perplexity_report = run(f"python -m reference_llm.evaluate perplexity --checkpoint {PRETRAINED} "
                                    f"--text {held_out_file}")
            mc_report = run(f"python -m reference_llm.evaluate mc --checkpoint {PRETRAINED}")
        """),
        p.md("""
            You should see the trained model's perplexity and bits per byte again (the same numbers as above),
            then an accuracy next to the chance level of the multiple-choice set.
        """),
        p.code("""
            # Check: what the notes above say.
            vocab = model.config.vocab_size
            assert abs(results["uniform"].perplexity / vocab - 1) < 1e-3, results["uniform"].perplexity
            assert results["trained"].perplexity < 0.6 * results["untrained"].perplexity
            assert f"{results['trained'].bits_per_byte:.4f}" in perplexity_report, perplexity_report
            assert "accuracy" in mc_report and "chance" in mc_report
            print("all checks passed")
        """),
    ]


FREE_PORT = """
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
"""


def distributed(p: Project) -> list[Cell]:
    if p.nodes > 1:
        launch = (
            "This project's script starts one node of a multi-node job, which waits for the others; "
            "`NNODES=1` (with a local `MASTER_ADDR` and a free port, for a script that asks for them) makes "
            "this machine the whole job."
        )
        env = "NPROC_PER_NODE=2 NNODES=1 MASTER_ADDR=127.0.0.1 MASTER_PORT={port}"
    else:
        launch = "This project's script runs on one node, so nothing else is needed."
        env = "NPROC_PER_NODE=2"
    return [
        p.md("""
            ## Data parallelism is gradient averaging

            With data parallelism (DDP) every process holds the whole model and takes a slice of each batch; an
            all-reduce averages the gradients, so every process takes the same step. That step is the one a
            single process takes on the whole batch: the mean loss's gradient is the mean of the halves'
            gradients. Checked here in one process:
        """),
        p.code("""
            from reference_llm.model import Transformer

            net = Transformer(small_model_config(config.model, vocab_size=512))
            batch = torch.randint(0, 512, (4, 33))
            x, y = batch[:, :-1], batch[:, 1:]

            def gradients(inputs, targets):
                net.zero_grad()
                net(inputs, targets)[1].backward()
                return [p.grad.clone() for p in net.parameters()]

            whole = gradients(x, y)
            halves = [gradients(x[:2], y[:2]), gradients(x[2:], y[2:])]
            averaged = [(a + b) / 2 for a, b in zip(*halves)]
            gap = max((w - a).abs().max().item() for w, a in zip(whole, averaged))
            print(f"largest difference between the whole batch's gradient and the average of the halves': {gap:.1e}")
        """),
        p.md("""
            You should see a difference around 1e-9: equal up to float rounding. (ZeRO and FSDP go further and
            also split the optimizer state, gradients and weights across processes, to fit larger models.)
        """),
        p.md(
            """
            ## Two processes on this machine

            `scripts/train_torchrun.sh` launches the project's training with `torchrun`; `NPROC_PER_NODE=2`
            starts two processes, which talk over gloo when there is no GPU. Each process trains on its share
            of every batch; rank 0 logs and writes the checkpoint.
        """,
            launch,
            TINY_NOTE,
        ),
        tiny_settings(p),
        p.code(
            "import json",
            FREE_PORT if p.nodes > 1 else "",
            'DDP = WORK / "ddp"',
            f'''
            ddp_log = run(f"{env} bash scripts/train_torchrun.sh {{TINY}} distributed.strategy=ddp "
                          f"train.max_steps=10 train.micro_batch=4 checkpoint.dir={{DDP}}")
        ''',
            """
            records = [json.loads(line) for line in (DDP / "metrics.jsonl").read_text().splitlines()]
            print("logged steps:", [r["step"] for r in records if "loss" in r])
        """,
        ),
        p.md("""
            You should see rank 0's log: `strategy ddp` with 512 tokens per step (2 processes x 4 sequences x 64
            tokens: the global batch of one process with `train.micro_batch=8`), ten steps, and a checkpoint in
            `runs/notebooks/ddp`. The checkpoint test `tests/checkpoints/test_distributed.py` checks that the
            weights after three such steps equal one process's exactly.
        """),
        p.code("""
            # Check: what the notes above say.
            assert gap < 1e-6, gap
            assert "512 tokens/step, strategy ddp" in ddp_log and (DDP / "latest").exists(), ddp_log
            assert [r["step"] for r in records if "loss" in r][-1] == 10
            print("all checks passed")
        """),
    ]


STEPS = {"pretrain": pretrain, "generate": generate, "evaluate": evaluate, "distributed": distributed}
