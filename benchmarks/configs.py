"""The model shapes every benchmark runs, defined once (the scripts import it from their folder).

- `baby`: nanoGPT's CPU example, a character model of Tiny Shakespeare.
- `char10m`: nanoGPT's shakespeare_char model, ~10M parameters (with a smaller batch).
- `gpt2s`: GPT-2 small, with its BPE vocabulary, one sequence a batch.
"""
CONFIGS = {
    #          n_layer n_head n_embd block_size batch_size vocab
    "baby":    dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "char10m": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8, vocab_size=65),
    "gpt2s":   dict(n_layer=12, n_head=12, n_embd=768, block_size=128, batch_size=1, vocab_size=50257),
}
