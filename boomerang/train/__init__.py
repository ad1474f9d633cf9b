"""Training: initialising a student from its teacher, distillation losses, recipes and the training loop."""
