"""Actions besides training: evaluate, inference."""
