"""Transfer-learning recipes: feature extraction and fine-tuning."""
