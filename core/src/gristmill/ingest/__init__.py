"""Records to token documents: opening sources, mapping fields, the error policy, encoding."""
