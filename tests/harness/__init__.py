"""What the test suites and the benchmarks share: namespaces, daemons, traffic, packets, rows."""
