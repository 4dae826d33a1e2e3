"""Task transfer: fine-tune a distilled student on target tasks (classification, pairs, NER, regression)."""
