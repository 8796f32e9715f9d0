"""Feedback as a dataset: records (the schema), the store (fsynced JSONL), Hub sync, the dataset
card, loading as `datasets` and the `python -m hub feedback` CLI. `callback.FeedbackCallback` is
the store as a Gradio `FlaggingCallback`."""
