"""Training utilities: collators, caption augmentation and the stage-1 / stage-2 Trainer subclasses."""
