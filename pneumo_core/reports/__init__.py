"""What a run tells people: the report with its plots, and the model card."""
