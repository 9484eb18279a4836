"""The automodel training backend: complete HF VLMs fine-tuned with NeMo AutoModel (docs/FULL_VLM_FINETUNING.md)."""
