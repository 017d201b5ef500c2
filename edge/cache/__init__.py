"""The cache: keys, RFC 9111 freshness and the node's pure verdicts, the memory store
with its LRU and body files, and the disk tier."""
