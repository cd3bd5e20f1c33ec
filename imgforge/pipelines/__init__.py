"""Pre- and post-processing around the networks, one module per task."""
