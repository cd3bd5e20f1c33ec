"""Plain nn.Modules whose state_dict keys equal the official checkpoints (one file per architecture)."""
