"""Notebook cells of post-training: sft, lora, align and reward. Each starts from the tiny runs that
`cells.pretrained` / `cells.fine_tuned` make when they are missing, so a notebook also runs on its own; run
in roadmap order, each reuses what the earlier ones wrote."""

from __future__ import annotations

from generator.notebooks.cells import Cell, Project, chat_data, fine_tuned, pretrained

PAIRS = """
    # (prompt, chosen, rejected): the preference pairs of this notebook.
    PAIRS = [
        ("Who wrote Hamlet?", " Shakespeare.", " I like turnips."),
        ("Name a tragedy.", " Macbeth.", " Tuesday."),
        ("Where is Elsinore?", " In Denmark.", " Purple."),
        ("Who is Juliet's love?", " Romeo.", " A spoon."),
    ]
"""


def sft(p: Project) -> list[Cell]:
    return [
        *pretrained(p),
        p.md("""
            ## The chat template

            A pretrained model continues text. To make it answer, it is fine-tuned on conversations written in a
            fixed layout, the chat template: special tokens mark where each turn starts and ends, so that at
            inference the prompt can end with "the assistant speaks now". Only the assistant's tokens are
            targets; the user's turns (and a system turn, when a conversation has one) are context: their
            targets are `IGNORE_INDEX`, -100, which the loss skips. Conversations are JSON Lines, one
            `{"messages": [...]}` per line; this notebook writes a few about the plays:
        """),
        chat_data(p),
        p.code("""
            from reference_llm.model import IGNORE_INDEX
            from reference_llm.posttrain.sft import sft_example
            from reference_llm.tokenizer.chat import END, add_chat_tokens

            chat = add_chat_tokens(tokenizer)  # the chat markers become new token ids
            question, answer = QUESTIONS[0]
            conversation = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            ids, targets = sft_example(conversation, chat)
            learned = chat.decode([t for t in targets if t != IGNORE_INDEX])
            print(chat.decode(ids))
            print(f"{len(ids)} tokens, {sum(t != IGNORE_INDEX for t in targets)} of them learned: {learned!r}")
        """),
        p.md("""
            You should see the conversation with its markers (`<|user|>`, `<|assistant|>`, `<|end|>`), and that
            the learned tokens spell exactly the answer followed by `<|end|>`.
        """),
        p.md("""
            ## The command

            `python -m reference_llm.posttrain.sft` starts from a checkpoint, adds the chat tokens (growing the
            embedding table if it must), packs conversations into rows and trains on the assistant tokens, with
            a shorter and gentler schedule than pretraining. `sft.data` names the JSON Lines file; without it
            the run uses the demo conversations of the `demo-data` extra.
        """),
        p.code("""
            import json

            run(f"{SFT} checkpoint.dir={SFTED}")
            records = [json.loads(line) for line in (SFTED / "metrics.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in records if "loss" in r]
            print(f"SFT loss: {losses[0]:.2f} at the first log, {losses[-1]:.2f} at the last")
            reply = run(f'python -m reference_llm.deploy.generate --checkpoint {SFTED} --chat --prompt "{question}" '
                        '--temperature 0 --max-new-tokens 24')
        """),
        p.md("""
            You should see the run report how many conversations and assistant tokens it trains on, a loss that
            falls from about 4 to below 1 in 100 steps, and, asked the first question, a reply close to the
            answer it was taught ("Romeo, of the house of Montague."). A model this small memorises its few
            conversations; it does not understand them.
        """),
        p.code("""
            # Check: what the notes above say.
            assert learned == answer + END, learned
            assert losses[-1] < 1.0 < losses[0], losses
            assert (SFTED / "latest").exists() and reply.strip()
            print("all checks passed")
        """),
    ]


def lora(p: Project) -> list[Cell]:
    return [
        *pretrained(p),
        p.md("""
            ## Low-rank adapters

            LoRA freezes every weight W of the model and learns an update B·A beside each chosen Linear layer,
            with A of shape (r, in) and B of shape (out, r) for a small rank r. B starts at zero, so at first the
            model is unchanged; only A and B train, a small fraction of the parameters, and afterwards B·A can be
            added into W. Here on the tiny pretrained model, taught one passage of held-out text:
        """),
        p.code("""
            import copy

            from reference_llm.posttrain.lora import LoRAConfig, apply_lora, merge_lora

            adapted = copy.deepcopy(model).train()
            passage = torch.tensor(tokenizer.encode(corpus[-3_000:])[: 2 * 65]).view(2, 65)
            x, y = passage[:, :-1], passage[:, 1:]
            base = {name: tensor.clone() for name, tensor in adapted.state_dict().items()}
            with torch.no_grad():
                start_logits, start_loss = adapted(x, y)
            wrapped = apply_lora(adapted, LoRAConfig(r=8, alpha=16.0))
            trainable = {name: p for name, p in adapted.named_parameters() if p.requires_grad}
            share = sum(p.numel() for p in trainable.values()) / sum(p.numel() for p in adapted.parameters())
            with torch.no_grad():
                unchanged = torch.equal(adapted(x)[0], start_logits)
            print(f"wrapped {len(wrapped)} layers, e.g. {wrapped[:2]}; trainable: {share:.1%} of the parameters; "
                  f"outputs unchanged at the start: {unchanged}")

            optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
            for _ in range(60):
                _, loss = adapted(x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            frozen = all(torch.equal(adapted.state_dict()[name], tensor) for name, tensor in base.items())
            with torch.no_grad():
                before_merge = adapted(x)[0]
                merge_lora(adapted)
                merge_gap = (adapted(x)[0] - before_merge).abs().max().item()
            print(f"loss on the passage: {start_loss.item():.2f} -> {loss.item():.2f}; "
                  f"base weights unchanged: {frozen}; merging changed the logits by {merge_gap:.1e}")
        """),
        p.md("""
            You should see the attention and MLP layers of both blocks wrapped, adapters of rank 8 holding a
            small share of the parameters (about a tenth at this tiny width; far less in a real model, where r
            is tiny next to the width), `outputs unchanged at the start: True`, the loss on the passage falling
            by about one nat (the frozen embeddings limit how far adapters alone can take it),
            `base weights unchanged: True`, and merging changing the logits by about 1e-6 (float rounding).
        """),
        p.md("""
            ## The command

            The SFT command with a `[lora]` section (here `lora.r=8` on the command line) trains adapters
            instead of the whole model, and writes the merged model as its checkpoint.
        """),
        chat_data(p),
        p.code("lora_log = run(f\"{SFT} lora.r=8 train.max_steps=20 checkpoint.dir={WORK / 'lora'}\")"),
        p.md("""
            You should see the run report its parameters with the trained ones a small fraction of them (such
            as `0.16M params (0.016M trained)`: the adapters), 20 steps, and a checkpoint in
            `runs/notebooks/lora`.
        """),
        p.code("""
            # Check: what the notes above say.
            assert unchanged and frozen and share < 0.25, (unchanged, frozen, share)
            assert start_loss.item() - loss.item() > 0.5, (start_loss.item(), loss.item())
            assert merge_gap < 1e-4, merge_gap
            assert (WORK / "lora" / "latest").exists() and "trained)" in lora_log
            print("all checks passed")
        """),
    ]


def align(p: Project) -> list[Cell]:
    return [
        *fine_tuned(p),
        p.md("""
            ## Direct preference optimisation

            DPO learns from pairs: a prompt, a chosen answer and a rejected one. It raises the chosen answer's
            log-probability and lowers the rejected one's, measured against a frozen copy of the starting model
            (the reference), so the policy cannot drift far from what SFT taught. The implicit reward of an
            answer is beta·log(pi/pi_ref); while the policy equals the reference both rewards are 0 and the loss
            is ln 2. Here on the tiny SFT model and one pair:
        """),
        p.code("""
            import copy
            import math

            from reference_llm.posttrain.dpo import dpo_step_loss, encode_answer, pair_batch
            from reference_llm.tokenizer.chat import encode_prompt

            policy, chat, _ = load_model(SFTED)
            policy.train()
            reference = copy.deepcopy(policy).eval().requires_grad_(False)
            prompt = encode_prompt([{"role": "user", "content": "Which play has a ghost?"}], chat)
            chosen, rejected = encode_answer(prompt, "Hamlet.", chat), encode_answer(prompt, "A recipe for soup.", chat)
            idx, labels = pair_batch([(chosen, rejected, len(prompt))])
            start = dpo_step_loss(policy, reference, idx, labels, beta=0.1)
            optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
            for _ in range(25):
                out = dpo_step_loss(policy, reference, idx, labels, beta=0.1)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
            end = dpo_step_loss(policy, reference, idx, labels, beta=0.1)
            print(f"DPO loss {start.loss.item():.4f} (ln 2 = {math.log(2):.4f}) -> {end.loss.item():.4f}; "
                  f"reward margin chosen - rejected: {start.margin:.3f} -> {end.margin:.3f}")
        """),
        p.md("""
            You should see the loss start at ln 2 = 0.6931 with a margin of 0, and after 25 steps a loss below
            0.3 with a positive margin: the chosen answer became more likely relative to the reference.
        """),
        p.md("""
            ## The command

            `python -m reference_llm.posttrain.dpo` does this over a JSON Lines file of
            `{"prompt", "chosen", "rejected"}` records (without `dpo.data`, the demo pairs of the `demo-data`
            extra), starting from the SFT checkpoint.
        """),
        p.code(
            PAIRS,
            """
            import json

            PAIRS_FILE = WORK / "preferences.jsonl"
            with PAIRS_FILE.open("w", encoding="utf-8") as f:
                for prompt_text, good, bad in PAIRS * 4:
                    record = {"prompt": prompt_text, "chosen": good.strip(), "rejected": bad.strip()}
                    f.write(json.dumps(record) + "\\n")
            dpo_log = run(f"python -m reference_llm.posttrain.dpo --checkpoint {SFTED} dpo.data={PAIRS_FILE} "
                          f"train.max_steps=10 train.micro_batch=4 train.device=cpu train.dtype=float32 eval.iters=2 "
                          f"checkpoint.interval=0 checkpoint.dir={WORK / 'dpo'}")
        """,
        ),
        p.md("""
            You should see the run start near ln 2 and end with its loss, `reward_margin` and `accuracy` (the
            share of pairs whose chosen answer has the larger reward), and a checkpoint in `runs/notebooks/dpo`.
        """),
        p.code("""
            # Check: what the notes above say.
            assert abs(start.loss.item() - math.log(2)) < 1e-5 and abs(start.margin) < 1e-6
            assert end.loss.item() < 0.3 and end.margin > 0, (end.loss.item(), end.margin)
            assert "reward_margin" in dpo_log and (WORK / "dpo" / "latest").exists()
            print("all checks passed")
        """),
    ]


def reward(p: Project) -> list[Cell]:
    return [
        *pretrained(p),
        p.md("""
            ## A reward model

            RLHF optimises a policy against a reward model: the transformer with its output head replaced by
            one number, read at the last token of prompt + answer. It learns from preference pairs with the
            Bradley-Terry loss, -log sigmoid(r_chosen - r_rejected). The head starts at zero, so every answer
            scores 0 and the loss starts at ln 2. Here its body is the tiny pretrained model:
        """),
        p.code(
            PAIRS,
            '''
            import copy
            import math

            from reference_llm.posttrain.reward import RewardModel, pairwise_loss


            def batch(texts):
                """Right-padded ids (B, T) and the real length of each row."""
                rows = [tokenizer.encode(t) for t in texts]
                lengths = torch.tensor([len(r) for r in rows])
                ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
                for i, r in enumerate(rows):
                    ids[i, :len(r)] = torch.tensor(r)
                return ids, lengths


            scorer = RewardModel(copy.deepcopy(model).train())
            chosen = batch([q + good for q, good, _ in PAIRS])
            rejected = batch([q + bad for q, _, bad in PAIRS])
            start_loss, start_accuracy = pairwise_loss(scorer(*chosen), scorer(*rejected))
            optimizer = torch.optim.AdamW(scorer.parameters(), lr=1e-3)
            for _ in range(30):
                loss, accuracy = pairwise_loss(scorer(*chosen), scorer(*rejected))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                loss, accuracy = pairwise_loss(scorer(*chosen), scorer(*rejected))
                scores = list(zip(scorer(*chosen).tolist(), scorer(*rejected).tolist()))
            print(f"loss {start_loss.item():.4f} -> {loss.item():.4f}, accuracy {accuracy.item():.2f}")
            for (q, good, bad), (r_good, r_bad) in zip(PAIRS, scores):
                print(f"{q!r}: chosen {r_good:+.2f}, rejected {r_bad:+.2f}")
        ''',
        ),
        p.md("""
            You should see the loss start at ln 2 = 0.6931 and end below 0.3 with accuracy 1.00: every chosen
            answer scored above its rejected one. Four pairs are memorised, not generalised from; a real reward
            model needs many thousands of human comparisons.
        """),
        p.md("""
            This step has no command of its own: its checkpoint test,
            `python -m pytest tests/checkpoints/test_reward.py`, trains the same on a fresh model of the
            project's family.
        """),
        p.code("""
            # Check: what the notes above say.
            assert abs(start_loss.item() - math.log(2)) < 1e-6
            assert accuracy.item() == 1.0 and loss.item() < 0.3, (accuracy.item(), loss.item())
            print("all checks passed")
        """),
    ]


STEPS = {"sft": sft, "lora": lora, "align": align, "reward": reward}
