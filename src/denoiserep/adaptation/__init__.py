"""``denoiserep adapt``: label-free adaptation to a shifted domain (DenoiseRep's closed-form
denoisers fitted on unlabelled target images, against BatchNorm re-estimation and TENT)."""
