"""samplers: diffusion samplers and noise schedulers behind one step() protocol."""
