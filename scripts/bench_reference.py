#!/usr/bin/env python3
"""Times the reference implementation (PyTorch `transformers`, f32, CPU) on the default model
with the IOI prompt, for comparison with `cargo bench -p glassbox --bench engine` on the same
machine. Run after `scripts/make_fixtures.py` (it uses that script's virtualenv):

    .venv-fixtures/bin/python scripts/bench_reference.py
"""
import glob
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

IOI = "When Mary and John went to the store, John gave a drink to"
PROMPTS = [
    IOI,
    "When Alice and Bob entered the room, Bob handed the key to",
    "After Tom and Anna left the party, Anna gave a ride to",
    "When Sarah and Mike arrived at the office, Mike sent an email to",
    "While Emma and David were at the park, David threw the ball to",
    "When Lisa and Mark sat down for dinner, Mark passed the salt to",
    "After Kate and Paul finished the game, Paul gave the prize to",
    "When Laura and James visited the museum, James showed the map to",
]


def median(f, runs):
    f()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    home = os.environ.get("GLASSBOX_HOME", os.path.expanduser("~/.cache/glassbox"))
    path = glob.glob(os.path.join(home, "models", "smollm2-135m", "*.gguf"))[0]
    d, f = os.path.split(path)
    torch.set_num_threads(os.cpu_count())
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    ids = tok(IOI, return_tensors="pt").input_ids
    mary, john = tok.convert_tokens_to_ids("ĠMary"), tok.convert_tokens_to_ids("ĠJohn")

    with torch.no_grad():
        fwd = median(lambda: model(ids), 20)

    def fwd_bwd():
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb).logits
        (logits[0, -1, mary] - logits[0, -1, john]).backward()

    fb = median(fwd_bwd, 10)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        b8 = median(lambda: model(**batch), 10)
    gen_cfg = model.generation_config
    gen_cfg.eos_token_id = None
    gen_cfg.pad_token_id = 0
    with torch.no_grad():
        gen = median(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                            do_sample=False, generation_config=gen_cfg), 3)
    print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| forward (1 prompt, {ids.shape[1]} tokens) | {fwd*1e3:.1f} ms |")
    print(f"| forward + backward (to the input embeddings) | {fb*1e3:.1f} ms |")
    print(f"| forward, batch of 8 prompts | {b8*1e3:.1f} ms |")
    print(f"| generate 32 tokens, greedy, key/value cache | {gen*1e3:.1f} ms |")


if __name__ == "__main__":
    main()
