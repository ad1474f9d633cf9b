"""Analysis: data-driven patch orders, pruning baselines (ShortGPT, LaCo), the student/teacher analysis."""
