"""tff-prune: federated pruning of speech-recognition models with TFF and tfmot."""
