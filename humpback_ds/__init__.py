"""humpback-ds: instruction backtranslation (Humpback) with DeepSpeed, from a laptop to a Slurm cluster."""

__version__ = "0.1.0"
