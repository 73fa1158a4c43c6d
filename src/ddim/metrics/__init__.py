"""Measuring images: FID/IS/KID maths and feature extraction (fid), the Inception weights (inception), the
reference statistics of a data set (reference), the scorer that joins them (scoring), and the seeded,
checksummed PNG shards that samples and reference images are stored in (shards). Used by evaluation and by
training's FID monitor."""
