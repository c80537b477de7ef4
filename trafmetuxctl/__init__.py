"""trafmetux client: reports, flows, live rates and quota checks over the daemon's socket."""
