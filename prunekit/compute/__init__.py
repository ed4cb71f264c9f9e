"""Numerical kernels shared by methods and reports: k-means, distances, RBF kernels and
MMD, and the on-disk grouping of rows by cluster."""
