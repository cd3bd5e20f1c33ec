"""Training: one shared trainer (trainer.py: loop, run folder, checkpoints, exact resume, logging, progress,
Ctrl-C, distributed setup) and the methods that plug into it (pix2pix.py, cyclegan.py, ddpm.py).
The public entry points are in api.py: `train_pix2pix`, `train_cyclegan`, `run`."""
