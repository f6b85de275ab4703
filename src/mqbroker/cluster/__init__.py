"""Clustering: etcd for leadership and the in-sync set, the leader's
write batches shipped to followers (docs/clustering.md)."""
