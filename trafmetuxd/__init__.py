"""trafmetux daemon: exact per-monitor traffic metering from an NFQUEUE."""

__version__ = "0.1.0"
