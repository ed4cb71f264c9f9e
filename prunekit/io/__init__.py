"""Files in and out: embedding sources and their formats, the scan cache, atomic writes,
provenance attributes, ids. Nothing here computes a score."""

# The dataset (HDF5), array (npz) or column (Parquet) that holds the embeddings, unless
# ``--key`` names another. Here, import-free, so the run context can name it cheaply.
DEFAULT_KEY = "embeddings"
