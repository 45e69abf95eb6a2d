"""pneumo core: the RSNA pneumonia detection domain as a plain library (no Prefect here)."""

DEFAULT_DATASET = "rsna-pneumonia-detection-challenge"
