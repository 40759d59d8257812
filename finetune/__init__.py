"""Fine-tuning runner: ``python -m finetune experiment=<name> [key=value ...]`` (docs/finetune.md)."""
