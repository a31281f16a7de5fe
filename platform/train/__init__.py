"""Training: Ray Train + DeepSpeed curriculum over the ingested shards."""
