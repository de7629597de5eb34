"""``denoiserep probe``: linear-probe accuracy of a frozen (fused) backbone (``.task``)."""
