"""Instruction fine-tuning: teach a pretrained GPT to answer Alpaca-style prompts.

    # GPT-2 (what this is meant for): a Hugging Face GPT-2 folder (config.json + model.safetensors)
    # and GPT-2's tokenizer from $TINYGPT_DATA_DIR/gpt2/
    python examples/finetune_instructions.py --init-from path/to/gpt2 --epochs 2
    python examples/finetune_instructions.py --init-from path/to/gpt2 --lora-rank 8 --learning-rate 5e-4

    # a small model of examples/train_shakespeare.py: a quick end-to-end run (the default)
    python examples/finetune_instructions.py --init-from out-shakespeare/ckpt.npz --learning-rate 1e-3

Data: $TINYGPT_DATA_DIR/instruction-data.json (or --data), 1,100 {"instruction", "input",
"output"} entries, shuffled with --seed and split 85/10/5 into train/test/val (935/110/55), as in
"LLMs from scratch" chapter 7. Each entry becomes the Alpaca prompt (tinygpt/finetune.py:
format_prompt) followed by its output and an end-of-text token; `collate` pads batches with
end-of-text and masks all but the first pad of each row in the targets. --mask-prompt also masks
the prompt, so that only the response is learned.

The val loss is printed before training and after each epoch, with the answer to the first val
prompt. At the end every test prompt is answered (greedy, up to --max-new-tokens, stopping at
end-of-text) into --out-dir/test-responses.json (written atomically, a "model_response" in each
entry), and the model, LoRA merged in, is saved beside it: a GPT-2 folder `model/` for a GPT-2
start, else `ckpt.npz` with `tokenizer.tok`.

Small models, and what is done for them:
- End-of-text. GPT-2's tokenizer has <|endoftext|> (50256); a character or self-trained BPE
  tokenizer has none, so one is added as a NEW id, the old vocabulary size (finetune.ensure_eot):
  the embedding grows a row, and the saved model has one token more than its tokenizer file.
- Unknown characters. A character tokenizer knows only Shakespeare's 65 characters; every other
  character (digits but 3, '#', '"', brackets, accents, ...) is DROPPED from prompts and answers
  (finetune.encode_known), and the count is printed. "### Instruction:" becomes " Instruction:".
- Context. train_shakespeare.py's default 64 tokens are shorter than the Alpaca header alone
  (~120 characters), so most responses are cut off at block_size and never learned; the run
  still goes end to end (CI does that). Train the base model with --block-size 256 or so.

GPT-2 124M trains slowly on a CPU (BENCHMARKS.md has the time per step): --max-steps and
--max-test cut a run short.
"""
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from tinygpt import functional
from tinygpt.checkpoint import load_model, save_checkpoint
from tinygpt.config import check_range, option, parse_config
from tinygpt.data import batches
from tinygpt.fileio import atomic_write, make_folder
from tinygpt.finetune import (collate, count_params, encode_known, ensure_eot, format_prompt, generate_response,
                              read_instructions, set_trainable, split)
from tinygpt.lora import LORA_PATTERNS, apply_lora, block_targets, merge_lora, merged_state_dict
from tinygpt.model import GPT
from tinygpt.optim import AdamW
from tinygpt.runtime import keep_freed_memory
from tinygpt.train import mean_loss, train_step


@dataclass
class InstructConfig:
    init_from: str = option("out-shakespeare/ckpt.npz", "a Hugging Face GPT-2 folder, or a checkpoint of "
                                                        "train_shakespeare.py (its tokenizer beside it)")
    data: str = option(None, "instruction JSON (default: $TINYGPT_DATA_DIR/instruction-data.json)", type=str)
    out_dir: str = option("out-instruct", "folder for test-responses.json and the fine-tuned model")
    epochs: int = option(2, "passes over the training split")
    max_steps: int = option(0, "stop after this many optimizer steps in all (0: no limit)")
    batch_size: int = option(8, "sequences per optimizer step")
    learning_rate: float = option(5e-5, "AdamW learning rate (constant); ~1e-3 suits a small model or LoRA")
    weight_decay: float = option(0.1, "AdamW weight decay (on matrices only)")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    mask_prompt: bool = option(False, "mask the prompt tokens in the targets: learn only the responses")
    lora_rank: int = option(0, "LoRA rank (0: no LoRA, every weight trains)")
    lora_alpha: float = option(16.0, "LoRA scale numerator: the update is (alpha / rank) x A B")
    lora_blocks: int = option(0, "LoRA goes into this many of the last blocks (0: all)")
    lora_targets: str = option("attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj",
                               "comma-separated projections of a block that get LoRA")
    max_new_tokens: int = option(256, "longest response generated for a test prompt")
    max_test: int = option(0, "answer only the first this many test prompts (0: all)")
    log_interval: int = option(10, "print the training loss every this many steps")
    seed: int = option(123, "seed for the split, the batch order and the LoRA weights")

    def __post_init__(self):
        check_range(self, ("epochs", "batch_size", "log_interval"), 1)
        check_range(self, ("max_steps", "lora_rank", "lora_blocks", "max_new_tokens", "max_test", "learning_rate",
                           "weight_decay", "grad_clip", "lora_alpha"), 0)


def encode_entries(entries, tokenizer):
    """(prompt ids + response ids, prompt lengths, characters dropped) for a list of entries."""
    seqs, prompt_lengths, dropped = [], [], 0
    for e in entries:
        prompt, n1 = encode_known(tokenizer, format_prompt(e))
        response, n2 = encode_known(tokenizer, e["output"])
        seqs.append(prompt + response)
        prompt_lengths.append(len(prompt))
        dropped += n1 + n2
    return seqs, prompt_lengths, dropped


def make_batch(ix, seqs, prompt_lengths, eot, cfg, block_size):
    """The keyword arguments of model(...) for the entries `ix`: padded inputs and targets."""
    inputs, targets = collate([seqs[i] for i in ix], eot, block_size=block_size,
                              prompt_lengths=[prompt_lengths[i] for i in ix] if cfg.mask_prompt else None)
    return {"idx": inputs, "targets": targets}


def main(argv=None):
    cfg = parse_config(InstructConfig, argv, description=__doc__.split("\n")[0])
    keep_freed_memory()  # reuse freed activation memory step after step (tinygpt/runtime.py)
    functional.manual_seed(cfg.seed)
    path = cfg.data or os.path.join(os.environ.get("TINYGPT_DATA_DIR", "."), "instruction-data.json")
    try:
        make_folder(cfg.out_dir)  # a file in its place is refused now, not after training
        data = read_instructions(path)
        model, tokenizer = load_model(cfg.init_from)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e} (set $TINYGPT_DATA_DIR or pass --data / --init-from)", file=sys.stderr)
        return 2
    is_gpt2 = os.path.isdir(cfg.init_from)  # a Hugging Face folder: saved back as one
    train_data, test_data, val_data = split(data, (0.85, 0.10, 0.05), cfg.seed)
    eot = ensure_eot(model, tokenizer)  # before the optimizer: it may grow the embedding
    block_size = model.config.block_size
    (train_seqs, train_prompts, dropped), (val_seqs, val_prompts, _) = (
        encode_entries(d, tokenizer) for d in (train_data, val_data))
    cut = sum(len(s) + 1 > block_size for s in train_seqs)
    print(f"data: {len(data)} entries -> train {len(train_data)}, val {len(val_data)}, test {len(test_data)}; "
          f"end-of-text id {eot}; {cut} of {len(train_seqs)} training sequences longer than block_size "
          f"{block_size} are cut" + (f"; {dropped} characters outside the vocabulary dropped" if dropped else ""))

    if cfg.lora_rank:
        n_layer = model.config.n_layer
        targets = block_targets(n_layer, cfg.lora_blocks or n_layer, cfg.lora_targets.split(","))
        wrapped = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, targets, seed=cfg.seed)
        set_trainable(model, LORA_PATTERNS)
        print(f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha} on {len(wrapped)} layers")
    trainable, total = count_params(model)
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    optimizer = AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    val_batches = [make_batch(b, val_seqs, val_prompts, eot, cfg, block_size)
                   for b in batches(len(val_seqs), cfg.batch_size)]
    print(f"before fine-tuning: val loss {mean_loss(model, val_batches):.4f}")
    rng = np.random.default_rng([cfg.seed, 1])  # the order of the training entries, each epoch
    model.train()
    step, t0, done = 0, time.perf_counter(), False
    for epoch in range(1, cfg.epochs + 1):
        for b in batches(len(train_seqs), cfg.batch_size, rng):
            batch = make_batch(b, train_seqs, train_prompts, eot, cfg, block_size)
            try:
                loss, _ = train_step(model, optimizer, [batch], cfg.grad_clip)
            except FloatingPointError as e:  # diverged: nothing is saved
                print(f"error: step {step}: {e}; stopped without saving", file=sys.stderr)
                return 1
            step += 1
            if step % cfg.log_interval == 0:
                print(f"epoch {epoch} step {step}: loss {loss:.4f} | {time.perf_counter() - t0:.0f}s")
            done = step == cfg.max_steps
            if done:
                break
        first = format_prompt(val_data[0])
        answer = tokenizer.decode(generate_response(model, encode_known(tokenizer, first)[0], eot, min(cfg.max_new_tokens, 64)))
        print(f"epoch {epoch}: val loss {mean_loss(model, val_batches):.4f} | {time.perf_counter() - t0:.0f}s\n"
              f"  {val_data[0]['instruction']!r} -> {answer!r}")
        if done:
            break

    merge_lora(model)  # a merged LoRA layer costs what a plain Linear does
    tests = test_data[:cfg.max_test] if cfg.max_test else test_data
    results = []
    for i, entry in enumerate(tests):
        ids = generate_response(model, encode_known(tokenizer, format_prompt(entry))[0], eot, cfg.max_new_tokens)
        results.append({**entry, "model_response": tokenizer.decode(ids).strip()})
        if i < 3:
            print(f"--- test {i}: {entry['instruction']!r}\n  expected: {entry['output']!r}\n"
                  f"  model:    {results[-1]['model_response']!r}")
    text = json.dumps(results, indent=2, ensure_ascii=False)
    atomic_write(os.path.join(cfg.out_dir, "test-responses.json"), lambda f: f.write(text.encode("utf-8")))
    print(f"wrote {len(results)} responses to {os.path.join(cfg.out_dir, 'test-responses.json')} "
          f"({time.perf_counter() - t0:.0f}s)")

    plain = GPT(model.config)  # the same model without LoRA layers
    plain.load_state_dict(merged_state_dict(model))
    if is_gpt2:
        plain.save_pretrained(os.path.join(cfg.out_dir, "model"))
    else:
        tokenizer.save(os.path.join(cfg.out_dir, "tokenizer.tok"))
        save_checkpoint(os.path.join(cfg.out_dir, "ckpt.npz"), plain,
                        config={"model": dataclasses.asdict(model.config), "finetune": dataclasses.asdict(cfg)},
                        iter_num=step, extra={"tokenizer_file": "tokenizer.tok", "eot_id": eot})
    print(f"saved the fine-tuned model in {cfg.out_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
