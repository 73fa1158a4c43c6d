"""Where evaluation results are written: the task result and the loggers (results), the paper's tables and
plots (tables), a multirun's table (sweep_callback), and the DDPM ablation table (ablation)."""
