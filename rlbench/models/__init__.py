"""Models: the embedded default (tokenizer, config, cold-start SFT), hub/local loading, roles."""
