"""Fusion of K models into one (averaging, OTFusion, Wasserstein and Gromov-Wasserstein barycenters)
and the statistics repairs that follow it (REPAIR, BatchNorm reset)."""
