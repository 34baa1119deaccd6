"""Datasets, the SimPEDES generator, transforms, samplers and tokenisers."""
