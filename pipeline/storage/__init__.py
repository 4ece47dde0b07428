"""Storage: the artifact contract, versioned artifact directories, training checkpoints, DVC, path and secret guards."""
