"""The DenoiseRep method: schedule, fusion mathematics, the denoise layer and its life cycle."""
