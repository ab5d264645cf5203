"""Alignment: permutations that bring one model's units onto another's (weight, activation and
covariance-weighted matching), their score terms and the assignment solvers."""
