"""Federated fusion on Flower: a Wasserstein-barycenter strategy run on Flower's simulation engine
(`flower`; the optional extra `modefuse[flower]`)."""
