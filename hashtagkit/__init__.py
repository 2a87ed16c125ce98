"""hashtagkit: hashtag recommendation for photos, built around the HARRISON benchmark.

The library is importable without the CLI: `hashtagkit.stores` holds the feature store,
`hashtagkit.data` the dataset readers, `hashtagkit.heads` the classifiers and
`hashtagkit.metrics` the one definition of every score.
"""

__version__ = "0.1.0"
