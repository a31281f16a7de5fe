"""Ingest: raw movies to WebDataset shards with Ray Data."""
