"""The maths of the two papers, pure torch: noise schedule and timestep sequences (schedule), the forward
process (forward), what the network predicts and the reverse variance (parameterization), the variational
bound (likelihood), the training objectives (objectives), and the closed-form Gaussian data (oracle)."""
