"""Training: the LightningModule (module), train(cfg) (train), the settings checked before a run (checks),
and the callbacks it adds (random_streams: per-rank seeded streams; sample_grid: sample grids)."""
