"""Training: device choice, chat formatting, the base model, generation, SFT and the reward model."""
