"""DenoiseRep: denoising model for representation learning."""
