"""The C2C fuser: projector, gate, layer map, alignment, training, checkpoints, CUDA graphs."""
