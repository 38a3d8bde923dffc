"""Rehearsal: the paper's GPU recipes run offline on CPU at the real shapes, through the user's
code path. A local hub serves stand-ins under the paper's hub ids (Qwen2.5-0.5B's exact
architecture with random weights and the real Qwen2.5 tokenizer, the reward backbones' shapes,
small datasets in the hub datasets' schemas) through HF_ENDPOINT, and a local judge speaks the
Nemotron reward protocol. See `python -m rlft.rehearsal --help`.

    hub.py     build_hub(root): the repos on disk, one manifest (commit sha, files) per repo
    models.py  model repos: published configs, tokenizers, seeded random weights
    data.py    dataset repos: parquet in the hub schemas and split names
    server.py  serve(root): the Hub HTTP API + the judge (/v1/chat/completions)
    check.py   probe(): load every repo by hub id, as a user's process would
"""
