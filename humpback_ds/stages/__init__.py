"""Method stages: each is `run(cfg) -> output path`, one per command of the humpback-ds CLI."""
